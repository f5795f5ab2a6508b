# The anonymizer image AnoMed runs, following AnoMed's submission templates: nginx on port 80 in
# front of gunicorn on 127.0.0.1:8000, dumb-init as PID 1, state in the volume /persistent_data.
# binutils: concrete links each compiled circuit with `ld` at /fit.
FROM python:3.12-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends dumb-init nginx binutils \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default

WORKDIR /app
COPY requirements.txt .
# requirements.txt is a complete lock, so no resolver run: it leaves out torch, which
# concrete-python declares but the served engine never uses (docker/torch-shim stands in for it)
RUN pip install --no-cache-dir --no-deps -r requirements.txt
COPY docker/torch-shim/ /app/shim/
COPY docker/nginx.conf /etc/nginx/conf.d/default.conf
COPY docker/entrypoint.sh /entrypoint.sh
COPY anonymizer/ anonymizer/
COPY app.py gunicorn.conf.py ./

# CHALLENGE_HOST is set by the platform; the model key comes from ANONYMIZER_MODEL_KEY or a file
# (ANONYMIZER_MODEL_KEY_FILE, or a secret mounted at /run/secrets/anonymizer_model_key)
ENV PYTHONPATH=/app/shim \
    MODEL_DIR=/persistent_data/models \
    ANONYMIZER_ID=fhe_anonymizer \
    PYTHONUNBUFFERED=1
VOLUME /persistent_data
EXPOSE 80

ENTRYPOINT ["/usr/bin/dumb-init", "--"]
CMD ["/entrypoint.sh"]
