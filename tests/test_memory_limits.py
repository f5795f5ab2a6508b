"""Issue 33: no body can ask the server for unbounded memory. The real server (gunicorn, two
workers) runs in a memory cgroup of its own and takes, at once, a header bomb, four ≈ 2 GB zip
bombs, a batch size of 10^9 and sixteen maximum-size key uploads: every answer is a 4xx or 429, no
worker dies or is OOM-killed, and the server decides (plaintext and encrypted) afterwards. A
MemoryError anywhere in a request becomes a 503, and the next request is served."""

import io
import os
import secrets
import shutil
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers import CREDIT_ENV, post_npz, quiet_party, random_rows
from inprocess import InProcessServer, config_for
from numpy.lib import format as npy_format

from challenge_stub.dataset import FEATURE_NAMES, PARTY_LAYOUT
from devtools.launch import GunicornServer, _children

LIMIT = 3 * 1024**3  # the cgroup's memory limit: a few times the server's own need (note figures)
N_FEATURES = len(FEATURE_NAMES)


class MemoryCgroup:
    """A memory cgroup (v1 or v2) below this process's own, with a limit; removed on close."""

    def __init__(self, limit: int) -> None:
        self.path, self.v2 = _own_memory_cgroup()
        self.path = self.path / f"anonymizer-test-{secrets.token_hex(4)}"
        self.path.mkdir()
        limit_file = "memory.max" if self.v2 else "memory.limit_in_bytes"
        (self.path / limit_file).write_text(str(limit))
        if not self.v2:  # no swap either: the limit is the memory
            _try_write(self.path / "memory.memsw.limit_in_bytes", str(limit))

    def join(self) -> None:
        """Move the calling process into the cgroup (a preexec_fn: its children follow)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    @property
    def peak(self) -> int:
        """The most memory the cgroup's processes held at once (page cache included)."""
        return int((self.path / ("memory.peak" if self.v2 else "memory.max_usage_in_bytes")).read_text())

    @property
    def oom_kills(self) -> int:
        """How many of its processes the kernel killed for want of memory."""
        text = (self.path / ("memory.events" if self.v2 else "memory.oom_control")).read_text()
        fields = dict(line.split() for line in text.splitlines())
        return int(fields.get("oom_kill", 0))

    def close(self) -> None:
        for _ in range(50):  # the processes take a moment to leave after they exit
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def _own_memory_cgroup() -> tuple[Path, bool]:
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/"), False
    for line in lines:
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/"), True
    raise OSError("no memory cgroup")


def _try_write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass  # memsw accounting is off on this kernel


@pytest.fixture(scope="module")
def cgroup():
    try:
        group = MemoryCgroup(LIMIT)
    except OSError as error:
        pytest.skip(f"cannot create a memory cgroup here ({error}): run as root on cgroup v1/v2")
    yield group
    group.close()


@pytest.fixture(scope="module")
def limited_server(cgroup, fitted_template, tmp_path_factory, stub):
    """The fitted TFHE model served by gunicorn (two workers) inside the cgroup."""
    model_dir = tmp_path_factory.mktemp("memory-limits") / "model"
    shutil.copytree(fitted_template, model_dir)
    env = {**CREDIT_ENV, "TREE_SELECTION": "off", "CHALLENGE_HOST": stub.host, "MODEL_DIR": str(model_dir)}
    server = GunicornServer(
        "app:application", env=env, log_path=model_dir.parent / "server.log", preexec_fn=cgroup.join
    )
    with server:
        yield server


# --- the bodies an attacker sends ---------------------------------------------------------------


def header_bomb(rows: int = 10**9) -> bytes:
    """A few hundred bytes whose X.npy header declares `rows` float64 rows (67 GiB at 10^9)."""
    return _npz(_header((rows, N_FEATURES)))


def zip_bomb(total: int = 2 * 1024**3, honest_header: bool = True) -> bytes:
    """≈ `total` bytes of zeros deflated to ≈ total/1000; the header declares them all, or one row
    (the rest then follows a header that promised less)."""
    rows = total // (8 * N_FEATURES) if honest_header else 1
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("X.npy", "w", force_zip64=True) as member:
            member.write(_header((rows, N_FEATURES)))
            chunk = bytes(64 * 1024**2)
            for _ in range(total // len(chunk)):
                member.write(chunk)
    return buffer.getvalue()


def _header(shape) -> bytes:
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return header.getvalue()


def _npz(member: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("X.npy", member)
    return buffer.getvalue()


def served_key_bound(server) -> int:
    """The largest key upload the served model takes (its keyset's size, uncompressed)."""
    from anonymizer.engines.registry import load_model
    from anonymizer.state.models import ModelStore
    from anonymizer.state.vault import ModelKeySource

    model_dir = Path(server.env["MODEL_DIR"])
    return ModelStore(model_dir, ModelKeySource(model_dir), load_model).current().max_key_bytes


class RssSampler:
    """The largest summed RSS of a process tree, sampled every 50 ms while it runs."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid, self.peak = root_pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            pids = [self.root_pid, *_children(self.root_pid)]
            self.peak = max(self.peak, sum(_rss(pid) for pid in pids))


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --- the tests ----------------------------------------------------------------------------------


def test_bombs_and_floods_get_4xx_and_the_server_decides_after(limited_server, cgroup, tmp_path):
    server = limited_server
    workers = set(_children(server.process.pid))
    assert len(workers) >= 2  # the workers, and the executor's process
    bound = served_key_bound(server)
    bombs = [zip_bomb(honest_header=True), zip_bomb(honest_header=False)] * 2
    assert all(len(bomb) < 4 * 1024**2 for bomb in bombs)  # ≈ 2 GB each once inflated
    legit = random_rows(5, seed=33)
    idle = sum(_rss(pid) for pid in [server.process.pid, *workers])

    def predict(body: bytes, **params) -> int:
        return requests.post(server.url + "/predict", data=body, params=params, timeout=300).status_code

    def upload(_: int) -> int:
        return requests.post(server.url + "/fhe/keys", data=os.urandom(bound), timeout=300).status_code

    with RssSampler(server.process.pid) as rss, ThreadPoolExecutor(24) as pool:
        header = pool.submit(predict, header_bomb())
        zips = [pool.submit(predict, bomb) for bomb in bombs]
        batch = pool.submit(lambda: post_npz(server, legit, timeout=300, batch_size=10**9).status_code)
        uploads = list(pool.map(upload, range(16)))
        statuses = {"header": header.result(), "zips": [z.result() for z in zips], "batch": batch.result()}

    assert statuses["header"] == 413
    assert statuses["zips"] == [413, 400, 413, 400]  # too large as declared; more data than declared
    assert statuses["batch"] == 400
    assert set(uploads) <= {400, 429} and 400 in uploads  # garbage once parsed, or "busy" before
    assert cgroup.oom_kills == 0 and set(_children(server.process.pid)) == workers

    assert post_npz(server, legit, timeout=300).status_code == 201
    with RssSampler(server.process.pid) as rss_largest:  # the largest request the limits allow
        largest = np.repeat(legit, 1_000_000 // len(legit), axis=0)  # MAX_ROWS; compresses well
        answer = post_npz(server, largest, timeout=600)
    assert answer.status_code == 201, answer.text
    party = quiet_party(server.url, tmp_path / "party")
    label, _ = party.score({name: legit[0, columns].tolist() for name, columns in PARTY_LAYOUT.items()})
    assert label is not None
    print(
        f"\nmemory limit {LIMIT / 2**20:.0f} MiB, server RSS idle {idle / 2**20:.0f} MiB: cgroup peak {cgroup.peak / 2**20:.0f} MiB "
        f"(page cache included), server RSS peak {rss.peak / 2**20:.0f} MiB under the bombs, "
        f"{rss_largest.peak / 2**20:.0f} MiB for 10^6 rows; key bound {bound} B; "
        f"uploads {sorted(uploads)}"
    )


def test_a_memory_error_in_a_request_is_503_and_the_next_request_is_served(model_dir, stub, monkeypatch):
    from anonymizer.http import resources

    real = resources.predict_in_batches
    failures = iter([MemoryError()])

    def short_of_memory(*args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(resources, "predict_in_batches", short_of_memory)
    rows = random_rows(3, seed=34)
    with InProcessServer(config_for(model_dir, stub)) as server:
        refused = post_npz(server, rows, timeout=120)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        assert refused.json()["code"] == "out_of_memory"
        assert post_npz(server, rows, timeout=120).status_code == 201


def test_batch_size_is_capped(model_dir, stub):
    rows = random_rows(3, seed=35)
    with InProcessServer(config_for(model_dir, stub)) as server:
        cap = server.config.max_batch_size
        assert post_npz(server, rows, timeout=120, batch_size=cap).status_code == 201
        refused = post_npz(server, rows, timeout=120, batch_size=cap + 1)
        assert refused.status_code == 400 and str(cap) in refused.json()["description"]
