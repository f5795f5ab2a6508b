#!/bin/bash
# Start gunicorn (127.0.0.1:8000) and nginx (port 80, and 443 when a TLS certificate is mounted)
# as the image's user; when either ends, the container ends. dumb-init (PID 1) forwards
# `podman/docker stop`'s SIGTERM to both.
set -euo pipefail
fail() { echo "ERROR: $*" >&2; exit 1; }
uid=$(id -u)
[[ $uid != 0 ]] || echo "WARNING: running as root; the image is meant to run as uid 10001 (anonymizer)." >&2

# The volume: a named volume takes /persistent_data's owner (10001) from the image on first use,
# but a bind mount, or a volume written by an image that ran as root, may not be ours.
mkdir -p "$MODEL_DIR" 2>/dev/null || true
probe=$(mktemp -p "$MODEL_DIR" .write-probe.XXXXXX 2>/dev/null) ||
  fail "MODEL_DIR $MODEL_DIR is not writable by uid $uid (/persistent_data belongs to" \
    "$(stat -c %u:%g /persistent_data)). Give the volume to uid 10001, e.g." \
    "\`docker run --rm --user 0 -v VOLUME:/persistent_data IMAGE chown -R 10001:10001 /persistent_data\`," \
    "or run the container as the volume's owner (--user UID:GID, with a model key mounted). See docs/deployment.md."
rm -f "$probe"

# nginx binds 80 (and 443) through the file capability cap_net_bind_service: the kernel refuses to
# run it when that capability was dropped, and withholds it under no-new-privileges. Say so.
if ((uid != 0)); then
  bounding=$(grep ^CapBnd: /proc/self/status | cut -f2)
  if (((0x$bounding >> 10 & 1) == 0)); then
    fail "the container was started without CAP_NET_BIND_SERVICE (e.g. --cap-drop ALL), which nginx" \
      "needs to bind port 80 as uid $uid: add it back (--cap-add NET_BIND_SERVICE)."
  fi
  if grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status &&
    (($(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null || echo 1024) > 80)); then
    fail "the container runs with no-new-privileges, so nginx cannot bind port 80 as uid $uid:" \
      "drop that option or set --sysctl net.ipv4.ip_unprivileged_port_start=0."
  fi
fi

secret=/run/secrets/anonymizer_model_key
generated=/var/lib/anonymizer/model.key # outside the data volume, never beside the models
if [[ -z ${ANONYMIZER_MODEL_KEY:-} && -z ${ANONYMIZER_MODEL_KEY_FILE:-} ]]; then
  if [[ -f $secret ]]; then
    export ANONYMIZER_MODEL_KEY_FILE=$secret
  else
    if [[ ! -s $generated ]]; then
      (umask 077 && python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())' \
        >$generated) || fail "cannot write $generated as uid $uid: mount a model key at $secret."
    fi
    echo "WARNING: no model key given: using $generated, generated inside this container." \
      "Models in the volume stay sealed against it, but a NEW container cannot open them" \
      "(refit, or mount a secret at $secret / set ANONYMIZER_MODEL_KEY_FILE)." >&2
    export ANONYMIZER_MODEL_KEY_FILE=$generated
  fi
fi

# nginx's runtime directory: pid, temporary bodies, and the links that switch TLS on
rm -rf /tmp/nginx && mkdir -m 0700 /tmp/nginx
cert=${TLS_CERT_FILE:-/run/secrets/tls.crt}
key=${TLS_KEY_FILE:-/run/secrets/tls.key}
if [[ -n ${TLS_CERT_FILE:-}${TLS_KEY_FILE:-} || -e $cert || -e $key ]]; then
  for file in "$cert" "$key"; do
    [[ -r $file ]] || fail "TLS: $file is missing or not readable by uid $uid (give it to uid 10001 or make it readable)."
  done
  ln -s "$cert" /tmp/nginx/tls.crt
  ln -s "$key" /tmp/nginx/tls.key
  ln -s /etc/nginx/anonymizer-tls.conf /tmp/nginx/tls.conf
  echo "TLS on port 443 with $cert" >&2
  if [[ ${TLS_REDIRECT_HTTP:-0} == 1 ]]; then
    # shellcheck disable=SC2016  # nginx's variables, not the shell's
    echo 'return 308 https://$host$request_uri;' >/tmp/nginx/redirect.conf
    echo "port 80 redirects to https" >&2
  fi
elif [[ ${TLS_REDIRECT_HTTP:-0} == 1 ]]; then
  fail "TLS_REDIRECT_HTTP=1 but no certificate at $cert and key at $key: nothing would serve https."
fi

gunicorn app:application -c /app/gunicorn.conf.py --bind 127.0.0.1:8000 --workers "${WORKERS:-2}" --threads 8 \
  --worker-class gthread --timeout 1800 --graceful-timeout 3 --no-control-socket &
nginx -g 'daemon off;' &
set +e
wait -n
exit $?
