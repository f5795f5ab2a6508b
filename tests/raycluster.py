"""A real Ray cluster on 127.0.0.1: a head and worker nodes, each its own `ray start` process."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from devtools.launch import ROOT, free_port

RAY = str(Path(sys.executable).with_name("ray"))
# notice a dead node in seconds, not the default half minute
FAST_HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def distinct_free_ports(count: int) -> list[int]:
    """`count` different ephemeral ports, all bound at once while they are chosen (one `free_port`
    after another can hand out the same port twice, and Ray refuses a node whose ports collide)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class LocalRayCluster:
    """`ray start --head` plus `add_node()` workers; `kill(node)` SIGKILLs one node's processes."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **FAST_HEALTH_CHECKS, **(env or {})}
        self.port = free_port()
        self.nodes: dict[int, subprocess.Popen] = {}  # node manager port -> its `ray start`
        self._next_worker_ports = 21000

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "LocalRayCluster":
        """Start the head (no CPUs: executors live on the worker nodes only)."""
        self._start_node(
            "head",
            [
                "--head",
                f"--port={self.port}",
                "--num-cpus=0",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
        )
        return self

    def add_node(self, cpus: int) -> int:
        """Start a worker node; returns its node manager port (its name in `ray.nodes()`)."""
        return self._start_node("worker", [f"--address={self.address}", f"--num-cpus={cpus}"])

    def _start_node(self, kind: str, arguments: list[str]) -> int:
        manager_port, object_port, metrics_port, env_port, agent_port, grpc_port = distinct_free_ports(6)
        low = self._next_worker_ports
        self._next_worker_ports += 1000  # each node its own worker port range
        command = [
            RAY,
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            *arguments,
            f"--node-manager-port={manager_port}",
            f"--object-manager-port={object_port}",
            f"--metrics-export-port={metrics_port}",
            f"--runtime-env-agent-port={env_port}",
            f"--dashboard-agent-listen-port={agent_port}",
            f"--dashboard-agent-grpc-port={grpc_port}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 999}",
        ]
        log_path = self.log_dir / f"{kind}-{manager_port}.log"
        with open(log_path, "ab") as log:
            self.nodes[manager_port] = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        # one node at a time: nodes on one machine pick their socket names by "first free index"
        self._wait_started(self.nodes[manager_port], log_path)
        return manager_port

    @staticmethod
    def _wait_started(process: subprocess.Popen, log_path: Path, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while b"Ray runtime started" not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"a Ray node did not start; see {log_path}")
            time.sleep(0.2)

    def wait_for_nodes(self, count: int, timeout: float = 120.0) -> None:
        """Until `count` nodes are alive (run in a driver connected to this cluster)."""
        import ray

        deadline = time.monotonic() + timeout
        while len([n for n in ray.nodes() if n["Alive"]]) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(ray.nodes())} of {count} Ray nodes came up")
            time.sleep(0.5)

    def kill(self, manager_port: int) -> None:
        """SIGKILL a node's `ray start`, raylet and workers, as a machine failure would."""
        process = self.nodes.pop(manager_port)
        # Ray puts each worker in its own process group: kill the whole tree, not just the group
        for pid in [process.pid, *_descendants(process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()

    def stop(self) -> None:
        """Kill every node (the head last)."""
        for port in list(self.nodes)[::-1]:
            self.kill(port)

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from the parent links in /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, frontier = [], [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += below
    return found
