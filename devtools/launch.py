"""Start a WSGI app under gunicorn on loopback and stop it again (used by `make run` and tests)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """An ephemeral port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GunicornServer:
    """A gunicorn process serving `app_spec` on 127.0.0.1; a context manager."""

    def __init__(
        self,
        app_spec: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        workers: int = 2,
        threads: int = 8,  # waiting on executors is cheap; plaintext keeps free threads
        timeout: int = 900,
        log_path: Path | None = None,
        preexec_fn=None,  # run in the child before gunicorn starts (e.g. joining a memory cgroup)
    ) -> None:
        self.app_spec = app_spec
        self.preexec_fn = preexec_fn
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.workers = workers
        self.threads = threads
        self.timeout = timeout
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait_seconds: float = 180.0) -> "GunicornServer":
        """Spawn gunicorn and wait until `GET /` answers."""
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            self.app_spec,
            "--bind",
            self.host,
            "--workers",
            str(self.workers),
            "--threads",
            str(self.threads),
            "--worker-class",
            "gthread",
            "--timeout",
            str(self.timeout),
            "--graceful-timeout",
            "5",
        ]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=self.preexec_fn,
        )
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn {self.app_spec} exited with {self.process.returncode}")
            try:
                requests.get(self.url + "/", timeout=2)  # any HTTP answer: the app is serving
                return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"gunicorn {self.app_spec} did not answer within {wait_seconds} s")

    def worker_pids(self) -> list[int]:
        """PIDs of the live gunicorn workers (children of the master but the executors' supervisor)."""
        assert self.process is not None
        return [pid for pid in _children(self.process.pid) if not _is_supervisor(pid)]

    def executor_pids(self) -> list[int]:
        """PIDs of the embedded executors: the supervisor's children but multiprocessing's resource tracker."""
        assert self.process is not None
        pids = []
        for child in _children(self.process.pid):
            if _is_supervisor(child):
                pids += [pid for pid in _children(child) if b"resource_tracker" not in _cmdline(pid)]
        return pids

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL it if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "GunicornServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _is_supervisor(pid: int) -> bool:
    return b"anonymizer.execution.pool" in _cmdline(pid)
