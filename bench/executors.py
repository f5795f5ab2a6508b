"""`make bench`, encrypted execution: the embedded executors measured through HTTP on this machine.

For 1 and 2 executors (the served default model, fitted once): the first decision after a key
upload (cold) vs the warm p50, memory per held key (executors' RSS growth per warmed key),
encrypted throughput (decisions/s, closed loop, two clients per executor), and under twice the
executors' capacity: the answers by status and plaintext /predict p95 (one row, as attackers send,
from a process of its own) against its idle p95. The load-generating clients run niced on this
machine's cores, standing in for clients elsewhere. Writes bench/results/executors.{json,md}.

Environment: STUB_ROWS (10000), BENCH_LOAD_SECONDS (20).
"""

import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import anomed_utils as utils
import numpy as np
import requests

from anonymizer.execution.base import shard
from anonymizer.party import PartyClient
from anonymizer.settings import Execution
from bench import UNLIMITED_DECISIONS
from challenge_stub.dataset import FEATURE_NAMES, PARTY_LAYOUT, make_credit_data
from devtools.launch import GunicornServer

RESULTS = Path(__file__).parent / "results"
CREDIT = {"ANONYMIZER_PARTIES": json.dumps(PARTY_LAYOUT), "FEATURE_NAMES": json.dumps(FEATURE_NAMES)}
KEYS_PER_EXECUTOR = 3
CLIENT_NICE = 10


class Party:
    """One party key set with a few pre-encrypted rows (so load generation costs no encryption)."""

    def __init__(self, server: GunicornServer, workdir: Path, seed: int) -> None:
        self.client = PartyClient(server.url, workdir, log=lambda message: None)
        self.client.keygen()
        parties = self.client.info().parties
        rows = make_credit_data(3, seed=seed)[0]
        self.ciphertexts = [
            {name: self.client.encrypt(name, row[columns].tolist()) for name, columns in parties.items()}
            for row in rows
        ]
        self.key_id: str | None = None

    def upload(self) -> float:
        started = time.perf_counter()
        self.key_id = self.client.key_id()
        return time.perf_counter() - started

    def decide(self, index: int = 0) -> tuple[int, float, str | None]:
        """(status, seconds, Retry-After) of one encrypted decision through HTTP."""
        parts = {"key_id": (None, self.key_id), "model_version": (None, self.client.version)}
        for name, data in self.ciphertexts[index % len(self.ciphertexts)].items():
            parts[name] = (name, data, "application/octet-stream")
        started = time.perf_counter()
        response = requests.post(self.client.server_url + "/predict", files=parts, timeout=600)
        seconds = time.perf_counter() - started
        if response.status_code == 201:
            self.client.decrypt(response.content)
        return response.status_code, seconds, response.headers.get("Retry-After")


def append_result(name: str, result: dict) -> None:
    """Print `result` and append it as one JSON line to bench/results/`name`."""
    print(json.dumps(result), flush=True)
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / name, "a") as results:
        results.write(json.dumps(result) + "\n")


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def plaintext_seconds(url: str, n: int) -> list[float]:
    """Latencies of `n` one-row plaintext /predict calls, from a process of their own (as an
    attacker's machine would: the load generator's threads must not slow the measurement)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_plaintext_seconds, url, n).result()


def _plaintext_seconds(url: str, n: int) -> list[float]:
    body = utils.named_ndarrays_to_bytes({"X": make_credit_data(1, seed=406)[0]})
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        response = requests.post(url + "/predict", data=body, timeout=60)
        seconds.append(time.perf_counter() - started)
        assert response.status_code == 201, response.text
    return seconds


def load(parties: list[Party], clients: int, seconds: float, stop: threading.Event | None = None):
    """`clients` threads deciding in a closed loop for `seconds`; statuses and 201s per second."""
    statuses: Counter = Counter()
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def client(index: int) -> None:
        # the clients share the server's cores here; niced (per thread on Linux) like the
        # executors, they stand in for clients on other machines instead of competing with HTTP
        os.nice(CLIENT_NICE)
        party = parties[index % len(parties)]
        round_ = 0
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            try:
                status, _, retry_after = party.decide(round_)
            except requests.RequestException:
                status, retry_after = "connection error", None
            with lock:
                statuses[status] += 1
            round_ += 1
            if status == 429:
                time.sleep(min(float(retry_after or 1), 0.5))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses, statuses[201] / (time.monotonic() - started)


def balanced_parties(server: GunicornServer, workdir: Path, executors: int) -> tuple[list, list]:
    """Parties whose keys cover every executor KEYS_PER_EXECUTOR times; (parties, cold figures)."""
    parties, colds, per_executor = [], [], Counter()
    seed = 500
    while min(per_executor[i] for i in range(executors)) < KEYS_PER_EXECUTOR:
        party = Party(server, workdir / f"party-{seed}", seed)
        upload_seconds = party.upload()
        status, first, _ = party.decide()
        assert status == 201
        colds.append({"upload_seconds": upload_seconds, "first_decision_seconds": first})
        home = shard(party.key_id, executors)
        if per_executor[home] < KEYS_PER_EXECUTOR:
            parties.append(party)
        per_executor[home] += 1
        seed += 1
    return parties, colds


def bench_executors(count: int, model_dir: Path, stub: GunicornServer, workdir: Path) -> dict:
    print(f">> {count} executor(s)", flush=True)
    load_seconds = float(os.environ.get("BENCH_LOAD_SECONDS", "20"))
    env = {
        **CREDIT,
        "CHALLENGE_HOST": stub.host,
        "MODEL_DIR": str(model_dir),
        "FHE_EXECUTORS": str(count),
        "MAX_KEYS_PER_OWNER": "64",
        **UNLIMITED_DECISIONS,
    }
    with GunicornServer("app:application", env=env) as server:
        requests.get(server.url + "/fhe/info", timeout=60).raise_for_status()
        time.sleep(5)  # the executors import concrete and load the circuit
        idle_rss = rss_mb(server.executor_pids())
        parties, colds = balanced_parties(server, workdir, count)
        held_rss = rss_mb(server.executor_pids())
        warm = [party.decide(i)[1] for i in range(10) for party in parties]
        idle_plain = plaintext_seconds(server.url, 100)
        _, throughput = load(parties, 2 * count, load_seconds)
        capacity = Execution(executors=count).capacity
        stop = threading.Event()
        overload = {}

        def overloaded() -> None:
            overload["statuses"], overload["rate"] = load(parties, 2 * capacity, load_seconds, stop)

        thread = threading.Thread(target=overloaded)
        thread.start()
        time.sleep(2)
        busy_plain = plaintext_seconds(server.url, 100)
        stop.set()
        thread.join()
    first = [c["first_decision_seconds"] for c in colds]
    return {
        "executors": count,
        "keys_uploaded": len(colds),
        "first_key_upload_seconds": round(colds[0]["upload_seconds"], 3),
        "key_upload_seconds_p50": round(statistics.median(c["upload_seconds"] for c in colds[1:]), 3),
        "first_decision_after_upload_p50": round(statistics.median(first), 3),
        "first_decision_after_upload_max": round(max(first), 3),
        "warm_p50": round(statistics.median(warm), 3),
        "first_over_warm": round(statistics.median(first) / statistics.median(warm), 2),
        "executor_rss_idle_mb": round(idle_rss),
        "rss_per_held_key_mb": round((held_rss - idle_rss) / len(colds), 1),
        "throughput_decisions_per_second": round(throughput, 2),
        "overload_clients": 2 * capacity,
        "overload_statuses": {str(k): v for k, v in overload["statuses"].items()},
        "plaintext_p95_idle": round(float(np.percentile(idle_plain, 95)), 4),
        "plaintext_p95_queue_full": round(float(np.percentile(busy_plain, 95)), 4),
    }


def fitted_model(stub: GunicornServer, model_dir: Path) -> dict:
    """Fit the served default model once; its description."""
    env = {**CREDIT, "CHALLENGE_HOST": stub.host, "MODEL_DIR": str(model_dir), **UNLIMITED_DECISIONS}
    with GunicornServer("app:application", env=env) as server:
        response = requests.post(server.url + "/fit", timeout=7200)
        response.raise_for_status()
        return response.json()["model"]


ROWS = [
    (f"keys uploaded (until every executor holds {KEYS_PER_EXECUTOR})", "keys_uploaded"),
    (
        "first key upload after start (executor loads the circuit, makes throwaway inputs), s",
        "first_key_upload_seconds",
    ),
    ("later key uploads incl. deserializing and one throwaway run, p50 s", "key_upload_seconds_p50"),
    ("first decision after upload, p50 s", "first_decision_after_upload_p50"),
    ("first decision after upload, max s", "first_decision_after_upload_max"),
    ("warm decision p50, s", "warm_p50"),
    ("first / warm", "first_over_warm"),
    ("executors' RSS idle, MB", "executor_rss_idle_mb"),
    ("RSS per held key, MB", "rss_per_held_key_mb"),
    ("encrypted throughput, decisions/s (2 clients per executor)", "throughput_decisions_per_second"),
    ("clients in the overload run (2 x capacity)", "overload_clients"),
    ("answers in the overload run", "overload_statuses"),
    ("plaintext /predict p95 idle, s", "plaintext_p95_idle"),
    ("plaintext /predict p95 with the queue full, s", "plaintext_p95_queue_full"),
]


def markdown(model: dict, results: list[dict]) -> str:
    header = f"Model: {model['hyperparameters']} ({model['pbs_count']} PBS), {os.cpu_count()} cores.\n\n"
    lines = [
        "| metric | " + " | ".join(f"{r['executors']} executor(s)" for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for label, key in ROWS:
        lines.append(f"| {label} | " + " | ".join(str(r[key]) for r in results) + " |")
    return header + "\n".join(lines)


def main() -> None:
    rows = os.environ.get("STUB_ROWS", "10000")
    with (
        tempfile.TemporaryDirectory() as tmp,
        GunicornServer("challenge_stub.wsgi:application", env={"STUB_ROWS": rows}, workers=1) as stub,
    ):
        model_dir = Path(tmp) / "model"
        model = fitted_model(stub, model_dir)
        results = [bench_executors(n, model_dir, stub, Path(tmp) / f"e{n}") for n in (1, 2)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "executors.json").write_text(json.dumps({"model": model, "runs": results}, indent=2))
    table = markdown(model, results)
    (RESULTS / "executors.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
