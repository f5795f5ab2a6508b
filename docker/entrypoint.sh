#!/bin/bash
# Start gunicorn (127.0.0.1:8000) and nginx (port 80); when either ends, the container ends.
# dumb-init (PID 1) forwards `podman/docker stop`'s SIGTERM to both.
set -uo pipefail
secret=/run/secrets/anonymizer_model_key
if [[ -z "${ANONYMIZER_MODEL_KEY:-}" && -z "${ANONYMIZER_MODEL_KEY_FILE:-}" && -f $secret ]]; then
  export ANONYMIZER_MODEL_KEY_FILE=$secret
fi
mkdir -p "$MODEL_DIR"
ln -sf /dev/stdout /var/log/nginx/access.log
ln -sf /dev/stderr /var/log/nginx/error.log
gunicorn app:application --bind 127.0.0.1:8000 --workers "${WORKERS:-2}" --threads 4 \
  --worker-class gthread --timeout 1800 --graceful-timeout 3 &
nginx -g 'daemon off;' &
wait -n
exit $?
