"""`python -m bench.interference`: what slows plaintext /predict while encrypted jobs run.

One anonymizer (2 embedded executors, the served default model fitted once). Plaintext one-row
/predict p50/p95 (300 calls from a process of their own) with, in the background, 4 threads of:
nothing; encrypted jobs sent straight to a second pool of 2 executors (SCHED_IDLE like the
served ones: the executors compute, no encrypted HTTP traffic); the same jobs through HTTP
`/predict` (the served executors compute and the HTTP workers relay). INTERFERENCE_ROUNDS (2)
rounds; one JSON line per measurement, appended to bench/results/interference.jsonl.
"""

import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from anonymizer.config import Config
from anonymizer.execution.base import Job
from anonymizer.execution.embedded import EmbeddedExecutors, embedded_settings
from anonymizer.execution.pool import ExecutorPool
from anonymizer.party import PartyClient
from anonymizer.wire import Claim
from bench import UNLIMITED_DECISIONS
from bench.executors import CREDIT, append_result, fitted_model, plaintext_seconds
from challenge_stub.dataset import make_credit_data
from devtools.launch import GunicornServer

LOADS = ("none", "executors only", "through HTTP")


def background(load: str, job, stop: threading.Event) -> list[threading.Thread]:
    """4 threads running `job` until `stop` (none for the idle case)."""

    def loop() -> None:
        while not stop.is_set():
            try:
                job(load)
            except Exception:  # noqa: BLE001 - a refused job only pauses the load
                time.sleep(0.05)

    threads = [] if load == "none" else [threading.Thread(target=loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    return threads


def main() -> None:
    rounds = int(os.environ.get("INTERFERENCE_ROUNDS", "2"))
    with (
        tempfile.TemporaryDirectory() as tmp,
        GunicornServer("challenge_stub.wsgi:application", env={"STUB_ROWS": "10000"}, workers=1) as stub,
    ):
        model_dir = Path(tmp) / "model"
        fitted_model(stub, model_dir)
        env = {
            **CREDIT,
            "CHALLENGE_HOST": stub.host,
            "MODEL_DIR": str(model_dir),
            "MAX_KEYS_PER_OWNER": "64",
            **UNLIMITED_DECISIONS,
        }
        with GunicornServer("app:application", env=env) as server:
            time.sleep(5)  # the executors load the circuit
            party = PartyClient(server.url, Path(tmp) / "party", log=lambda message: None)
            parties = party.info().parties
            row = make_credit_data(1, seed=3)[0][0]
            ciphertexts = {
                name: party.encrypt(name, row[columns].tolist()) for name, columns in parties.items()
            }
            key_id, version, digest = party.key_id(), party.version, party.info().keys_digest
            form = {"key_id": (None, key_id), "model_version": (None, version)}
            form |= {name: (name, data, "application/octet-stream") for name, data in ciphertexts.items()}
            pool = ExecutorPool(embedded_settings(Config.from_env({**os.environ, **env})), 2)
            direct = EmbeddedExecutors(pool.start(), job_timeout=120)
            direct.warm(key_id)

            def job(load: str) -> None:
                if load == "through HTTP":
                    requests.post(server.url + "/predict", files=form, timeout=120)
                else:
                    direct.run(Job(key_id, Claim(version, digest), list(ciphertexts.values()), "decide"))

            try:
                for index in range(rounds):
                    for load in LOADS:
                        stop = threading.Event()
                        threads = background(load, job, stop)
                        time.sleep(2)
                        seconds = plaintext_seconds(server.url, 300)
                        stop.set()
                        for thread in threads:
                            thread.join()
                        result = {
                            "round": index,
                            "load": load,
                            "p50": round(float(np.percentile(seconds, 50)), 4),
                            "p95": round(float(np.percentile(seconds, 95)), 4),
                            "ended": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        }
                        append_result("interference.jsonl", result)
            finally:
                pool.stop()


if __name__ == "__main__":
    main()
