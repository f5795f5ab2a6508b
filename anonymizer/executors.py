"""Where encrypted jobs run: key-affine executors outside the HTTP workers, behind one interface.

`Executors` is what the web app calls; `EmbeddedExecutors` (this module) reaches executor processes
on this machine, `RayExecutors` (ray_executors.py) reaches Ray actors across machines. A key id
always maps to the same executor, so a key is deserialized once per machine, at upload time.

The embedded executors speak the standard library's `multiprocessing.connection` over Unix
sockets with `send_bytes` frames only (a JSON header, then raw ciphertexts): nothing is unpickled.
The sockets live in a fresh 0700 directory, so only this user's processes can connect.
"""

import atexit
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Protocol

from .config import Config
from .keyholder import HolderSettings, KeyHolder, StaleJob
from .keystore import UnknownKey
from .store import StoreUnavailable
from .vault import SealError

_logger = logging.getLogger(__name__)

SOCKETS_ENV = "ANONYMIZER_EXECUTOR_SOCKETS"  # set by the process that owns the pool
MAX_HEADER_BYTES = 4096
CONNECT_SECONDS = 20.0  # an executor (re)starting imports concrete and binds its socket


class Busy(RuntimeError):
    """The executor's queue is full; `retry_after` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExecutorUnavailable(RuntimeError):
    """No executor answered (starting, restarting, or it died mid-job): retry shortly."""


class Executors(Protocol):
    """Runs encrypted jobs where their key is held."""

    def warm(self, key_id: str) -> None:
        """Deserialize a freshly uploaded key where its jobs will run."""

    def run(self, key_id: str, model_version: str, ciphertexts: list[bytes]) -> bytes:
        """The encrypted result; raises Busy, ExecutorUnavailable, UnknownKey, StaleJob,
        StoreUnavailable, SealError or ValueError."""

    def close(self) -> None:
        """Release what this handle started (never the store)."""


def shard(key_id: str, count: int) -> int:
    """The executor index of `key_id`: stable across processes (unlike Python's `hash`)."""
    return int.from_bytes(hashlib.sha256(key_id.encode()).digest()[:8], "big") % count


@dataclass(frozen=True)
class ExecutorSettings:
    """One embedded executor: where the store is, how many jobs may wait, how nice it runs."""

    holder: HolderSettings
    max_waiting: int = 2
    nice: int = 10
    idle: bool = True  # SCHED_IDLE


# ---- the executor process ---------------------------------------------------------------------

# a job's failure travels as a status word; the client maps it back to the same exception
_STATUS_OF = ((UnknownKey, "unknown_key"), (StaleJob, "stale"), (SealError, "unavailable"),
              (StoreUnavailable, "unavailable"), (ValueError, "bad_input"))  # fmt: skip


class JobQueue:
    """One job at a time on a KeyHolder, at most `max_waiting` behind it; Busy beyond that."""

    def __init__(self, holder: KeyHolder, max_waiting: int) -> None:
        self._holder = holder
        self._limit = 1 + max_waiting
        self._admitted = 0
        self._lock = threading.Lock()
        self._runner = ThreadPoolExecutor(max_workers=1)
        self._mean_seconds = 1.0

    def run(self, key_id: str, model_version: str, ciphertexts: list[bytes]) -> bytes:
        """Run one job in turn, or raise Busy at once if the queue is full."""
        with self._lock:
            if self._admitted >= self._limit:
                wait = math.ceil(self._admitted * self._mean_seconds)
                raise Busy(f"{self._admitted} encrypted jobs are ahead.", max(1, wait))
            self._admitted += 1
        try:
            return self._runner.submit(self._timed, key_id, model_version, ciphertexts).result()
        finally:
            with self._lock:
                self._admitted -= 1

    def preload(self) -> None:
        """Start loading the served circuit in the background (a failure waits for the first job)."""
        self._runner.submit(self._holder.preload)

    def warm(self, key_id: str) -> None:
        """Load a key in turn with the jobs (uploads are not subject to the queue bound)."""
        self._runner.submit(self._holder.warm, key_id).result()

    def _timed(self, key_id: str, model_version: str, ciphertexts: list[bytes]) -> bytes:
        started = time.perf_counter()
        result = self._holder.run(key_id, model_version, ciphertexts)
        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.perf_counter() - started)
        return result


def attempt(job) -> tuple[dict, bytes | None]:
    """Run `job()`; its result or failure as a reply header (and result bytes), never a raise."""
    try:
        result = job()
    except Busy as error:
        return {"status": "busy", "detail": str(error), "retry_after": error.retry_after}, None
    except Exception as error:  # noqa: BLE001 - every failure becomes a reply, never a dead executor
        status = next((word for kind, word in _STATUS_OF if isinstance(error, kind)), "failed")
        if status == "failed":
            _logger.exception("encrypted job failed")
        detail = error.reason if isinstance(error, UnknownKey) else str(error)
        return {"status": status, "detail": detail}, None
    return {"status": "ok"}, result


def _answer(queue: JobQueue, connection: Connection) -> None:
    """Read one request from `connection`, run it, send the reply frames."""
    with connection:
        try:
            header = json.loads(connection.recv_bytes(MAX_HEADER_BYTES))
            parts = [connection.recv_bytes() for _ in range(int(header.get("parts", 0)))]
            key_id = str(header["key_id"])
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as error:
            _logger.warning("dropped a malformed executor request: %s", error)
            return
        if header.get("op") == "warm":
            reply, result = attempt(lambda: queue.warm(key_id))
        else:
            version = str(header.get("model_version"))
            reply, result = attempt(lambda: queue.run(key_id, version, parts))
        try:
            connection.send_bytes(json.dumps(reply).encode())
            if result is not None:
                connection.send_bytes(result)
        except OSError:
            pass  # the HTTP worker gave up waiting; nothing to tell it


def serve_executor(settings: ExecutorSettings, address: str, parent_pid: int) -> None:
    """Main of one executor process: accept jobs on `address` until the parent goes away."""
    from .fhe_runtime import start_fhe_runtime

    os.nice(settings.nice)  # plaintext /predict in the HTTP workers comes first
    if settings.idle:
        # only CPU time nobody else wants: nice alone left plaintext p95 under a full queue at
        # 2.3-5.2x its idle p95 in `make bench`, SCHED_IDLE at 0.8-3.9x (README: Performance)
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as error:  # a seccomp profile may forbid it: niceness alone then
            _logger.warning("executor keeps the normal scheduler (SCHED_IDLE refused: %s)", error)
    start_fhe_runtime()
    queue = JobQueue(KeyHolder(settings.holder), settings.max_waiting)
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


# ---- the pool that keeps executor processes alive -----------------------------------------------


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
            [sys.executable, "-m", "anonymizer.executors", str(os.getpid())],
            stdin=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
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
    holder = settings.holder
    return {
        "model_dir": str(holder.model_dir),
        "model_key": holder.model_key,
        "model_key_file": str(holder.model_key_file) if holder.model_key_file else None,
        "cached_keys": holder.cached_keys,
        "max_waiting": settings.max_waiting,
        "nice": settings.nice,
        "idle": settings.idle,
    }


def settings_from_dict(values: dict) -> ExecutorSettings:
    """The inverse of settings_to_dict."""
    holder = HolderSettings(
        Path(values["model_dir"]),
        values["model_key"],
        Path(values["model_key_file"]) if values["model_key_file"] else None,
        int(values["cached_keys"]),
    )
    return ExecutorSettings(
        holder, int(values["max_waiting"]), int(values["nice"]), bool(values["idle"])
    )


# ---- the HTTP workers' handle --------------------------------------------------------------------


class EmbeddedExecutors:
    """Sends each job to the executor process that owns its key id."""

    def __init__(
        self, addresses: list[str], job_timeout: float, pool: ExecutorPool | None = None
    ) -> None:
        self._addresses = addresses
        self._job_timeout = job_timeout
        self._pool = pool  # a private pool, started on first use
        self._lock = threading.Lock()

    def warm(self, key_id: str) -> None:
        self._call(key_id, {"op": "warm", "key_id": key_id}, [])

    def run(self, key_id: str, model_version: str, ciphertexts: list[bytes]) -> bytes:
        header = {"op": "run", "key_id": key_id, "model_version": model_version}
        return self._call(key_id, header, ciphertexts)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()

    def _call(self, key_id: str, header: dict, parts: list[bytes]) -> bytes | None:
        addresses = self._started()
        connection = self._connect(addresses[shard(key_id, len(addresses))])
        with connection:
            try:
                connection.send_bytes(json.dumps({**header, "parts": len(parts)}).encode())
                for part in parts:
                    connection.send_bytes(part)
                if not connection.poll(self._job_timeout):
                    raise ExecutorUnavailable(f"No answer within {self._job_timeout:.0f} s.")
                reply = json.loads(connection.recv_bytes(MAX_HEADER_BYTES))
                result = connection.recv_bytes() if reply["status"] == "ok" and parts else None
            except ValueError as error:  # a reply header that is not JSON
                raise ExecutorUnavailable(f"The executor answered garbage ({error}).") from error
            except (OSError, EOFError) as error:
                raise ExecutorUnavailable(f"The executor stopped mid-job ({error}).") from error
        raise_for_status(key_id, reply)
        return result

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
                    raise ExecutorUnavailable(f"No executor is listening ({error}).") from error
                time.sleep(0.2)


def raise_for_status(key_id: str, reply: dict) -> None:
    """Turn an executor's reply back into the exception the job raised (nothing if it succeeded)."""
    status, detail = reply.get("status"), str(reply.get("detail", ""))
    if status == "ok":
        return
    if status == "busy":
        raise Busy(detail, int(reply.get("retry_after", 1)))
    if status == "unknown_key":
        raise UnknownKey(key_id, detail)
    if status == "stale":
        raise StaleJob(detail)
    if status == "unavailable":
        raise StoreUnavailable(detail)
    if status == "bad_input":
        raise ValueError(detail)
    raise ExecutorUnavailable(f"The encrypted job failed in the executor: {detail}")


def start_embedded(settings: ExecutorSettings, count: int, job_timeout: float) -> EmbeddedExecutors:
    """Executors for this process: those its gunicorn master started, else a private pool."""
    shared = os.environ.get(SOCKETS_ENV)
    if shared:
        return EmbeddedExecutors(shared.split(os.pathsep), job_timeout)
    return EmbeddedExecutors([], job_timeout, ExecutorPool(settings, count))


def embedded_settings(config: Config) -> ExecutorSettings:
    """One embedded executor's settings: the machine's FHE_MAX_QUEUED split over its executors."""
    execution = config.execution
    holder = HolderSettings(
        config.model_dir, config.model_key, config.model_key_file, execution.cached_keys
    )
    return ExecutorSettings(holder, execution.waiting_per_executor, execution.nice, execution.idle)


def open_executors(config: Config) -> Executors:
    """The executors FHE_EXECUTION names: embedded processes (default) or Ray actors."""
    execution = config.execution
    if execution.mode == "ray":
        from .ray_executors import RayExecutors  # Ray is only needed by those who distribute

        return RayExecutors(config.model_dir, execution)
    return start_embedded(embedded_settings(config), execution.executors, execution.job_timeout)


if __name__ == "__main__":  # the supervisor process started by ExecutorPool
    logging.basicConfig(level=logging.INFO)
    orders = json.loads(sys.stdin.buffer.read())
    supervise(settings_from_dict(orders["settings"]), orders["addresses"], int(sys.argv[1]))
