#!/bin/bash
# Start gunicorn (127.0.0.1:8000) and nginx (port 80); when either ends, the container ends.
# dumb-init (PID 1) forwards `podman/docker stop`'s SIGTERM to both.
set -uo pipefail
secret=/run/secrets/anonymizer_model_key
generated=/var/lib/anonymizer/model.key  # outside the data volume, never beside the models
if [[ -z "${ANONYMIZER_MODEL_KEY:-}" && -z "${ANONYMIZER_MODEL_KEY_FILE:-}" ]]; then
  if [[ -f $secret ]]; then
    export ANONYMIZER_MODEL_KEY_FILE=$secret
  else
    if [[ ! -s $generated ]]; then
      (umask 077 && mkdir -p "$(dirname $generated)" &&
        python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())' > $generated)
    fi
    echo "WARNING: no model key given: using $generated, generated inside this container." \
      "Models in the volume stay sealed against it, but a NEW container cannot open them" \
      "(refit, or mount a secret at $secret / set ANONYMIZER_MODEL_KEY_FILE)." >&2
    export ANONYMIZER_MODEL_KEY_FILE=$generated
  fi
fi
mkdir -p "$MODEL_DIR"
ln -sf /dev/stdout /var/log/nginx/access.log
ln -sf /dev/stderr /var/log/nginx/error.log
gunicorn app:application -c /app/gunicorn.conf.py --bind 127.0.0.1:8000 --workers "${WORKERS:-2}" --threads 8 \
  --worker-class gthread --timeout 1800 --graceful-timeout 3 &
nginx -g 'daemon off;' &
wait -n
exit $?
