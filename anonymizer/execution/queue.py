"""One executor's admission: one running job, a bounded number waiting, Busy beyond that."""

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .base import Busy, Job, reply_for
from .runner import JobRunner

_logger = logging.getLogger(__name__)


class JobQueue:
    """One job at a time on a JobRunner, at most `max_waiting` behind it; Busy beyond that."""

    def __init__(self, runner: JobRunner, max_waiting: int) -> None:
        self._job_runner = runner
        self._limit = 1 + max_waiting
        self._admitted = 0
        self._lock = threading.Lock()
        self._runner = ThreadPoolExecutor(max_workers=1)
        self._mean_seconds = 1.0

    def run(self, job: Job) -> bytes:
        """Run one job in turn, or raise Busy at once if the queue is full."""
        with self._lock:
            if self._admitted >= self._limit:
                wait = math.ceil(self._admitted * self._mean_seconds)
                raise Busy(f"{self._admitted} encrypted jobs are ahead.", max(1, wait))
            self._admitted += 1
        try:
            return self._runner.submit(self._timed, job).result()
        finally:
            with self._lock:
                self._admitted -= 1

    def preload(self) -> None:
        """Start loading the served circuit in the background (a failure waits for the first job)."""
        self._runner.submit(self._job_runner.preload)

    def warm(self, key_id: str) -> None:
        """Load a key in turn with the jobs (uploads are not subject to the queue bound)."""
        self._runner.submit(self._job_runner.warm, key_id).result()

    def _timed(self, job: Job) -> bytes:
        started = time.perf_counter()
        result = self._job_runner.run(job)
        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.perf_counter() - started)
        return result


def attempt(job) -> tuple[dict, bytes | None]:
    """Run `job()`; its result or failure as a reply header (and result bytes), never a raise."""
    try:
        result = job()
    except Exception as error:  # noqa: BLE001 - every failure becomes a reply, never a dead executor
        reply = reply_for(error)
        if reply["status"] == "failed":
            _logger.exception("encrypted job failed")
        return reply, None
    return {"status": "ok"}, result
