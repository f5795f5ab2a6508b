"""gunicorn entry point: `gunicorn app:application` (configuration from the environment)."""

import logging

from anonymizer.config import Config
from anonymizer.http.app import create_app

logging.basicConfig(level=logging.INFO)
application = create_app(Config.from_env())
