"""The pool that keeps embedded executor processes alive: a supervisor subprocess restarts them.

Run as `python -m anonymizer.execution.pool PARENT_PID` by ExecutorPool, settings on its stdin.
"""

import atexit
import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .process import ExecutorSettings, serve_executor
from .runner import RunnerSettings

_logger = logging.getLogger(__name__)


def supervise(settings: ExecutorSettings, addresses: list[str], parent_pid: int) -> None:
    """Keep one executor process per address alive, restart the dead, until SIGTERM or orphaned."""
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner stops us with SIGTERM
    processes: list = [None] * len(addresses)
    while not stopping.is_set() and os.getppid() == parent_pid:
        for index, address in enumerate(addresses):
            process = processes[index]
            if process is None or not process.is_alive():
                if process is not None:
                    _logger.warning("executor %d exited (%s); restarting", index, process.exitcode)
                processes[index] = context.Process(
                    target=serve_executor, args=(settings, address, os.getpid()), daemon=True
                )
                processes[index].start()
        stopping.wait(0.5)
    for process in processes:
        if process is not None and process.is_alive():
            process.terminate()
    for process in processes:
        if process is not None:
            process.join(5)


class ExecutorPool:
    """Starts `count` executor processes under a supervisor process that restarts them; stops them.

    The supervisor is a plain subprocess (settings on its stdin, never in the environment), so the
    process that owns the pool, often gunicorn's master, forks its workers without
    multiprocessing state.
    """

    def __init__(self, settings: ExecutorSettings, count: int) -> None:
        self._settings = settings
        self._count = count
        self._directory: Path | None = None
        self._supervisor: subprocess.Popen | None = None
        self.addresses: list[str] = []

    def start(self) -> list[str]:
        """Spawn the supervisor; returns the executors' socket addresses."""
        self._directory = Path(tempfile.mkdtemp(prefix="anonymizer-executors-"))  # mode 0700
        self.addresses = [str(self._directory / f"executor-{i}.sock") for i in range(self._count)]
        self._supervisor = subprocess.Popen(
            [sys.executable, "-m", "anonymizer.execution.pool", str(os.getpid())],
            stdin=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
        )
        self._write_settings()
        atexit.register(self.stop)
        return self.addresses

    def _write_settings(self) -> None:
        message = {"settings": settings_to_dict(self._settings), "addresses": self.addresses}
        self._supervisor.stdin.write(json.dumps(message).encode())
        self._supervisor.stdin.close()

    def stop(self) -> None:
        """Stop the supervisor and its executors; remove the socket directory."""
        if self._supervisor is not None and self._supervisor.poll() is None:
            self._supervisor.terminate()
            try:
                self._supervisor.wait(10)
            except subprocess.TimeoutExpired:
                self._supervisor.kill()
                self._supervisor.wait()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


def settings_to_dict(settings: ExecutorSettings) -> dict:
    """ExecutorSettings as JSON-ready values (for the supervisor's stdin)."""
    runner = settings.runner
    return {
        "model_dir": str(runner.model_dir),
        "model_key": runner.model_key,
        "model_key_file": str(runner.model_key_file) if runner.model_key_file else None,
        "cached_keys": runner.cached_keys,
        "max_waiting": settings.max_waiting,
        "nice": settings.nice,
        "idle": settings.idle,
    }


def settings_from_dict(values: dict) -> ExecutorSettings:
    """The inverse of settings_to_dict."""
    runner = RunnerSettings(
        Path(values["model_dir"]),
        values["model_key"],
        Path(values["model_key_file"]) if values["model_key_file"] else None,
        int(values["cached_keys"]),
    )
    return ExecutorSettings(runner, int(values["max_waiting"]), int(values["nice"]), bool(values["idle"]))


if __name__ == "__main__":  # the supervisor process started by ExecutorPool
    logging.basicConfig(level=logging.INFO)
    orders = json.loads(sys.stdin.buffer.read())
    supervise(settings_from_dict(orders["settings"]), orders["addresses"], int(sys.argv[1]))
