# The anonymizer image AnoMed runs, following AnoMed's submission templates: nginx on port 80 in
# front of gunicorn on 127.0.0.1:8000, dumb-init as PID 1, state in the volume /persistent_data.
# Everything runs as the unprivileged user anonymizer (uid 10001): gunicorn and the native code
# that deserialises untrusted keys and ciphertexts, and nginx, which may bind ports below 1024
# through a file capability (cap_net_bind_service; setcap comes with nginx's dependencies).
# binutils: concrete links each compiled circuit with `ld` at /fit.
FROM python:3.12-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends dumb-init nginx binutils \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
    && setcap cap_net_bind_service=+ep /usr/sbin/nginx \
    && groupadd --gid 10001 anonymizer \
    && useradd --uid 10001 --gid anonymizer --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin anonymizer \
    && install -d -o anonymizer -g anonymizer -m 0755 /persistent_data \
    && install -d -o anonymizer -g anonymizer -m 0700 /var/lib/anonymizer \
    && case "$(python -c 'import sys; print(sys.prefix)')" in /root/*) chmod o+x /root ;; esac
# (the last line: the local stand-in for python:3.12-slim keeps CPython under /root/.pyenv, which
# the user must traverse; the real image has it in /usr/local and /root stays 0700)

WORKDIR /app
COPY requirements.txt .
# requirements.txt is a complete lock, so no resolver run: it leaves out torch, which
# concrete-python declares but the served engine never uses (docker/torch-shim stands in for it)
RUN pip install --no-cache-dir --no-deps -r requirements.txt
COPY docker/torch-shim/ /app/shim/
COPY docker/nginx.conf /etc/nginx/nginx.conf
COPY docker/nginx-tls.conf /etc/nginx/anonymizer-tls.conf
COPY docker/entrypoint.sh /entrypoint.sh
COPY anonymizer/ anonymizer/
COPY app.py gunicorn.conf.py ./
# /app stays root-owned and read-only to the user, so compile its bytecode now
RUN python -m compileall -q /app

# CHALLENGE_HOST is set by the platform; the model key comes from ANONYMIZER_MODEL_KEY or a file
# (ANONYMIZER_MODEL_KEY_FILE, or a secret mounted at /run/secrets/anonymizer_model_key); TLS is
# served on 443 when a certificate and key are mounted (docker/entrypoint.sh, docs/deployment.md)
ENV PYTHONPATH=/app/shim \
    MODEL_DIR=/persistent_data/models \
    ANONYMIZER_ID=fhe_anonymizer \
    PYTHONUNBUFFERED=1
VOLUME /persistent_data
EXPOSE 80 443
USER 10001:10001

ENTRYPOINT ["/usr/bin/dumb-init", "--"]
CMD ["/entrypoint.sh"]
