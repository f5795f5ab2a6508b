"""The executor process: answers jobs on one Unix socket with a JobQueue over a JobRunner.

It speaks the standard library's `multiprocessing.connection` with `send_bytes` frames only (a
JSON header, then raw ciphertexts): nothing is unpickled.
"""

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener

from ..engines.runtime import start_fhe_runtime
from .base import Job
from .queue import JobQueue, attempt
from .runner import JobRunner, RunnerSettings

_logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 4096


@dataclass(frozen=True)
class ExecutorSettings:
    """One embedded executor: where the store is, how many jobs may wait, how nice it runs."""

    runner: RunnerSettings
    max_waiting: int = 2
    nice: int = 10
    idle: bool = True  # SCHED_IDLE


def _answer(queue: JobQueue, connection: Connection) -> None:
    """Read one request from `connection`, run it, send the reply frames."""
    with connection:
        try:
            header = json.loads(connection.recv_bytes(MAX_HEADER_BYTES))
            parts = [connection.recv_bytes() for _ in range(int(header.get("parts", 0)))]
            op = header.get("op")
            key_id = str(header["key_id"])
            job = None if op in ("warm", "preload") else Job.from_header(header, parts)
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as error:
            _logger.warning("dropped a malformed executor request: %s", error)
            return
        if op == "preload":
            reply, result = attempt(queue.preload)
        elif job is None:
            reply, result = attempt(lambda: queue.warm(key_id))
        else:
            reply, result = attempt(lambda: queue.run(job))
        try:
            connection.send_bytes(json.dumps(reply).encode())
            if result is not None:
                connection.send_bytes(result)
        except OSError:
            pass  # the HTTP worker gave up waiting; nothing to tell it


def serve_executor(settings: ExecutorSettings, address: str, parent_pid: int) -> None:
    """Main of one executor process: accept jobs on `address` until the parent goes away."""
    os.nice(settings.nice)  # plaintext /predict in the HTTP workers comes first
    if settings.idle:
        # only CPU time nobody else wants: nice alone left plaintext p95 under a full queue at
        # 2.3-5.2x its idle p95 in `make bench`, SCHED_IDLE at 0.8-3.9x (README: Performance)
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as error:  # a seccomp profile may forbid it: niceness alone then
            _logger.warning("executor keeps the normal scheduler (SCHED_IDLE refused: %s)", error)
    start_fhe_runtime()
    queue = JobQueue(JobRunner(settings.runner), settings.max_waiting)
    queue.preload()
    _exit_with_parent(parent_pid)
    if os.path.exists(address):
        os.unlink(address)  # left by a predecessor that died
    with Listener(address, family="AF_UNIX", backlog=64) as listener:
        while True:
            try:
                connection = listener.accept()
            except OSError:
                continue
            threading.Thread(target=_answer, args=(queue, connection), daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
