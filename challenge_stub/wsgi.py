"""gunicorn entry point: `gunicorn challenge_stub.wsgi:application`."""

from .app import create_app_from_env

application = create_app_from_env()
