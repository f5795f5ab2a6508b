"""`python -m bench.refits`: how often a refit on the same data keeps the parties' keys.

For each dataset (REFIT_DATASETS, default credit and wine from the stub) one anonymizer with the
default settings (model selection on) is fitted, an applicant uploads its key, then REFITS
(default 4) refits follow; after each, the served keys digest is compared with the first and the
applicant's key is used to stage a ciphertext (201: kept; 409: the refit needs new keys), and
where it was kept, the applicant's first and second decision after the refit are timed (through
the SDK: encrypt, predict, decrypt; the first REFIT_PAUSE_SECONDS, default 10, after the refit
answered, as a party that comes back a little later) against its warm decision before any
refit. Before the keys digest every refit answered 409 (keys were bound to the model version).
Writes bench/results/refits.{json,md}.
"""

import json
import os
import tempfile
import time
from pathlib import Path
from statistics import median

import requests

from anonymizer.party import PartyClient
from challenge_stub.dataset import FEATURE_NAMES, PARTY_LAYOUT
from devtools.launch import GunicornServer

RESULTS = Path(__file__).parent / "results"


def fit(url: str) -> float:
    """POST /fit; its wall time in seconds."""
    started = time.perf_counter()
    response = requests.post(url + "/fit", timeout=1800)
    response.raise_for_status()
    return time.perf_counter() - started


def timed_decision(party: PartyClient, values: dict) -> float:
    """Seconds of one encrypted decision through the SDK."""
    started = time.perf_counter()
    party.score(values)
    return time.perf_counter() - started


def refits_of(dataset: str, refits: int, workdir: Path, pause: float) -> dict:
    """Fit, upload a key, refit `refits` times: whether each refit kept the key, and the
    decisions with it `pause` seconds after each refit."""
    stub_env = {"STUB_ROWS": "3000", "STUB_SEED": "0", "STUB_DATASET": dataset}
    with GunicornServer("challenge_stub.wsgi:application", env=stub_env, workers=1) as stub:
        env = {"CHALLENGE_HOST": stub.host, "MODEL_DIR": str(workdir / "model")}
        if dataset == "credit":
            env |= {
                "ANONYMIZER_PARTIES": json.dumps(PARTY_LAYOUT),
                "FEATURE_NAMES": json.dumps(FEATURE_NAMES),
            }
        with GunicornServer("app:application", env=env) as server:
            seconds = [fit(server.url)]
            party = PartyClient(server.url, workdir / "party", log=lambda message: None)
            first = party.info().to_document()
            key_id = party.key_id()
            name = list(first["parties"])[-1]
            ciphertext = party.encrypt(name, [0.0] * len(first["parties"][name]))
            values = {p: [0.0] * len(columns) for p, columns in first["parties"].items()}
            warm = [timed_decision(party, values) for _ in range(3)][1:]
            rounds = []
            for _ in range(refits):
                seconds.append(fit(server.url))
                info = requests.get(server.url + "/fhe/info", timeout=60).json()
                staged = requests.put(
                    f"{server.url}/fhe/keys/{key_id}/inputs/{name}", data=ciphertext, timeout=60
                )
                decisions = []
                if staged.ok:
                    time.sleep(pause)
                    decisions = [timed_decision(party, values) for _ in range(2)]
                rounds.append(
                    {
                        "model_version": info["model_version"],
                        "same_digest": info["keys_digest"] == first["keys_digest"],
                        "stage_status": staged.status_code,
                        "model": info.get("engine"),
                        "decision_seconds_after": decisions,
                    }
                )
    kept = sum(r["stage_status"] == 201 for r in rounds)
    return {
        "dataset": dataset,
        "refits": refits,
        "kept": kept,
        "fit_seconds": seconds,
        "warm_decision_seconds": warm,
        "pause_seconds": pause,
        "rounds": rounds,
    }


def markdown(results: list[dict]) -> str:
    lines = [
        f"Refits on the same data with the default settings ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); "
        f"decisions after a refit start {results[0]['pause_seconds']:.0f} s after it (REFIT_PAUSE_SECONDS).",
        "",
        "| dataset | refits | keys kept by the old rule (a key is bound to its version: every refit 409) | keys kept now (measured: same keys digest, staging 201) | fit p50, s | warm decision before any refit, s | first decision after a refit with the kept key, p50 / max s | second, p50 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        firsts = [d["decision_seconds_after"][0] for d in r["rounds"] if d["decision_seconds_after"]]
        seconds = [d["decision_seconds_after"][1] for d in r["rounds"] if d["decision_seconds_after"]]
        after = f"{median(firsts):.3f} / {max(firsts):.3f}" if firsts else "-"
        second = f"{median(seconds):.3f}" if seconds else "-"
        lines.append(
            f"| {r['dataset']} | {r['refits']} | 0 | {r['kept']} | {median(r['fit_seconds']):.0f} "
            f"| {median(r['warm_decision_seconds']):.3f} | {after} | {second} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    datasets = os.environ.get("REFIT_DATASETS", "credit,wine").split(",")
    refits = int(os.environ.get("REFITS", "4"))
    pause = float(os.environ.get("REFIT_PAUSE_SECONDS", "10"))
    results = []
    for dataset in datasets:
        with tempfile.TemporaryDirectory() as workdir:
            results.append(refits_of(dataset, refits, Path(workdir), pause))
            print(json.dumps(results[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "refits.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "refits.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
