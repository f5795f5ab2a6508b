"""gunicorn reads this file from the working directory: one executor pool per machine.

The master starts the encrypted executors before forking its workers and tells them where the
executors listen (ANONYMIZER_EXECUTOR_SOCKETS), so every worker shares them: each key is
deserialized once per machine, not once per worker. Without this file, each worker starts its own.
"""

import os
import sys

_pool = None


def on_starting(server):
    """Start the embedded executors (FHE_EXECUTION=embedded, the default) in the master."""
    global _pool
    from anonymizer.config import Config
    from anonymizer.execution.embedded import SOCKETS_ENV, embedded_settings
    from anonymizer.execution.pool import ExecutorPool

    if getattr(server.app, "app_uri", None) != "app:application":
        return  # another app run from this directory (the challenge stub): no executors
    # each worker admits its share of the executors' capacity (anonymizer/config.py)
    os.environ.setdefault("ANONYMIZER_HTTP_WORKERS", str(server.cfg.workers))
    config = Config.from_env()
    if config.execution.mode != "embedded" or os.environ.get(SOCKETS_ENV):
        return
    _pool = ExecutorPool(embedded_settings(config), config.execution.executors)
    os.environ[SOCKETS_ENV] = os.pathsep.join(_pool.start())
    server.log.info("started %d encrypted executors", config.execution.executors)


def on_exit(server):
    """Stop the executors with the master."""
    if _pool is not None:
        _pool.stop()


def post_worker_init(worker):
    """Set each worker's GIL switch interval (ANONYMIZER_GIL_SWITCH_SECONDS; default Python's 5 ms)."""
    sys.setswitchinterval(float(os.environ.get("ANONYMIZER_GIL_SWITCH_SECONDS", "0.005")))
