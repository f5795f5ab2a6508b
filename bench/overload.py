"""`python -m bench.overload`: plaintext /predict p95 idle vs under a full encrypted queue, for
server variants, with the CPU each process kind used while plaintext was timed.

The overload phase of bench/executors.py alone, repeated per variant (OVERLOAD_VARIANTS: a JSON
list of env overrides for the anonymizer, default `[{}, {}]`) with OVERLOAD_EXECUTORS (2) embedded
executors and OVERLOAD_SECONDS (20) of load by 2 x capacity clients. Appends one JSON line per
variant to bench/results/overload.jsonl.
"""

import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from anonymizer.settings import Execution
from bench import UNLIMITED_DECISIONS
from bench.executors import CREDIT, append_result, balanced_parties, fitted_model, load, plaintext_seconds
from devtools.launch import GunicornServer


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of `pids` so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def overload_run(variant: dict, count: int, seconds: float, model_dir: Path, stub, workdir: Path) -> dict:
    """One server with `variant`'s env: idle plaintext p95, then p95 and CPU under overload."""
    env = {
        **CREDIT,
        "CHALLENGE_HOST": stub.host,
        "MODEL_DIR": str(model_dir),
        "FHE_EXECUTORS": str(count),
        "MAX_KEYS_PER_OWNER": "64",
        **UNLIMITED_DECISIONS,
        **variant,
    }
    with GunicornServer("app:application", env=env) as server:
        requests.get(server.url + "/fhe/info", timeout=60).raise_for_status()
        time.sleep(5)  # the executors import concrete and load the circuit
        parties, _ = balanced_parties(server, workdir, count)
        idle = plaintext_seconds(server.url, 200)
        stop, out = threading.Event(), {}

        def overloaded() -> None:
            out["statuses"], out["rate"] = load(
                parties, 2 * Execution(executors=count).capacity, seconds, stop
            )

        thread = threading.Thread(target=overloaded)
        thread.start()
        time.sleep(2)
        kinds = {"workers": server.worker_pids(), "executors": server.executor_pids(), "bench": [os.getpid()]}
        before, started = {k: cpu_seconds(p) for k, p in kinds.items()}, time.monotonic()
        busy = plaintext_seconds(server.url, 200)
        elapsed = time.monotonic() - started
        used = {k: round((cpu_seconds(p) - before[k]) / elapsed, 2) for k, p in kinds.items()}
        stop.set()
        thread.join()
    return {
        "variant": variant,
        "executors": count,
        "p95_idle": round(float(np.percentile(idle, 95)), 4),
        "p95_busy": round(float(np.percentile(busy, 95)), 4),
        "p50_busy": round(float(np.percentile(busy, 50)), 4),
        "ratio": round(float(np.percentile(busy, 95) / np.percentile(idle, 95)), 2),
        "cpu_cores": used,
        "statuses": {str(k): v for k, v in out["statuses"].items()},
        "rate": round(out["rate"], 2),
        "ended": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> None:
    variants = json.loads(os.environ.get("OVERLOAD_VARIANTS", "[{}, {}]"))
    count = int(os.environ.get("OVERLOAD_EXECUTORS", "2"))
    seconds = float(os.environ.get("OVERLOAD_SECONDS", "20"))
    with (
        tempfile.TemporaryDirectory() as tmp,
        GunicornServer("challenge_stub.wsgi:application", env={"STUB_ROWS": "10000"}, workers=1) as stub,
    ):
        model_dir = Path(tmp) / "model"
        fitted_model(stub, model_dir)
        for index, variant in enumerate(variants):
            append_result(
                "overload.jsonl",
                overload_run(variant, count, seconds, model_dir, stub, Path(tmp) / f"v{index}"),
            )


if __name__ == "__main__":
    main()
