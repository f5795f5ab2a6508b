"""Embedded executors: key-affine executor processes on this machine, outside the HTTP workers.

`EmbeddedExecutors` implements the `Executors` contract (base.py) by reaching the executor
processes (process.py) that a supervisor keeps alive (pool.py). A key id always maps to the same
executor, so a key is deserialized once per machine, at upload time. The sockets live in a fresh
0700 directory, so only this user's processes can connect.
"""

import json
import logging
import os
import threading
import time
from multiprocessing.connection import Client, Connection
from typing import TYPE_CHECKING

from .base import ExecutorUnavailable, Job, raise_for_status, shard
from .pool import ExecutorPool
from .process import MAX_HEADER_BYTES, ExecutorSettings
from .runner import RunnerSettings

if TYPE_CHECKING:
    from ..config import Config

_logger = logging.getLogger(__name__)

SOCKETS_ENV = "ANONYMIZER_EXECUTOR_SOCKETS"  # set by the process that owns the pool
CONNECT_SECONDS = 20.0  # an executor (re)starting imports concrete and binds its socket


class EmbeddedExecutors:
    """Sends each job to the executor process that owns its key id."""

    def __init__(self, addresses: list[str], job_timeout: float, pool: ExecutorPool | None = None) -> None:
        self._addresses = addresses
        self._job_timeout = job_timeout
        self._pool = pool  # a private pool, started on first use
        self._lock = threading.Lock()

    def warm(self, key_id: str) -> None:
        self._call(key_id, {"op": "warm", "key_id": key_id}, [])

    def run(self, job: Job) -> bytes:
        return self._call(job.key_id, job.header(), job.ciphertexts)

    def preload(self) -> None:
        for address in self._started():
            try:
                self._exchange(address, {"op": "preload", "key_id": ""}, [])
            except ExecutorUnavailable as error:  # its first job loads the model then
                _logger.info("could not ask executor %s to preload: %s", address, error)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()

    def _call(self, key_id: str, header: dict, parts: list[bytes]) -> bytes | None:
        addresses = self._started()
        reply, result = self._exchange(addresses[shard(key_id, len(addresses))], header, parts)
        raise_for_status(key_id, reply)
        return result

    def _exchange(self, address: str, header: dict, parts: list[bytes]) -> tuple[dict, bytes | None]:
        """Send one request to the executor at `address`; its reply header and result bytes
        (ExecutorUnavailable if it does not answer in time or answers garbage)."""
        with self._connect(address) as connection:
            try:
                connection.send_bytes(json.dumps({**header, "parts": len(parts)}).encode())
                for part in parts:
                    connection.send_bytes(part)
                if not connection.poll(self._job_timeout):
                    raise ExecutorUnavailable(f"No answer within {self._job_timeout:.0f} s.")
                reply = json.loads(connection.recv_bytes(MAX_HEADER_BYTES))
                result = connection.recv_bytes() if reply["status"] == "ok" and parts else None
            except ValueError as error:  # a reply header that is not JSON
                raise ExecutorUnavailable("The executor answered garbage.") from error
            except (OSError, EOFError) as error:
                raise ExecutorUnavailable("The executor stopped mid-job.") from error
        return reply, result

    def _started(self) -> list[str]:
        with self._lock:
            if not self._addresses and self._pool is not None:
                self._addresses = self._pool.start()
            return self._addresses

    def _connect(self, address: str) -> Connection:
        deadline = time.monotonic() + CONNECT_SECONDS
        while True:
            try:
                return Client(address, family="AF_UNIX")
            except (FileNotFoundError, ConnectionRefusedError) as error:
                if time.monotonic() > deadline:
                    raise ExecutorUnavailable("No executor is listening.") from error
                time.sleep(0.2)


def start_embedded(settings: ExecutorSettings, count: int, job_timeout: float) -> EmbeddedExecutors:
    """Executors for this process: those its gunicorn master started, else a private pool."""
    shared = os.environ.get(SOCKETS_ENV)
    if shared:
        return EmbeddedExecutors(shared.split(os.pathsep), job_timeout)
    return EmbeddedExecutors([], job_timeout, ExecutorPool(settings, count))


def embedded_settings(config: "Config") -> ExecutorSettings:
    """One embedded executor's settings: the machine's FHE_MAX_QUEUED split over its executors."""
    execution = config.execution
    runner = RunnerSettings(config.model_dir, config.model_key, config.model_key_file, execution.cached_keys)
    return ExecutorSettings(runner, execution.waiting_per_executor, execution.nice, execution.idle)
