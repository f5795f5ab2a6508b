"""`make bench`: the served model against concrete-ml's default tree, measured through HTTP.

For each setting: /fit time (train + compile), PBS count, accuracy (the challenge's evaluation),
keygen time, evaluation-key and per-party ciphertext sizes, encrypted prediction latency as a party
sees it (the whole multipart POST /predict), and plaintext /predict throughput on 10k-row batches
against in-process scikit-learn predict. Writes bench/results/latest.{json,md} and a plot of
latency against accuracy over the candidates /fit considered.

Environment: STUB_ROWS (10000), BENCH_PREDICTIONS (20), BASELINE_PREDICTIONS (3: one encrypted
prediction of the default tree takes minutes here), BENCH_ROUNDS (5 throughput rounds).
"""

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import anomed_utils as utils
import numpy as np
import requests
from sklearn.tree import DecisionTreeClassifier

from anonymizer.client import PartyClient
from anonymizer.launch import GunicornServer
from challenge_stub.dataset import make_credit_data

RESULTS = Path(__file__).parent / "results"
SETTINGS = {
    "baseline: concrete-ml DecisionTreeClassifier()": {
        "TREE_SELECTION": "off", "TREE_MAX_DEPTH": "0", "TREE_MIN_SAMPLES_LEAF": "1", "TREE_N_BITS": "6",
    },
    "served: default selection": {},
}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_encrypted(server: GunicornServer, workdir: Path, n_predictions: int) -> dict:
    """Keygen, key upload and `n_predictions` encrypted predictions of fresh applicants."""
    party = PartyClient(server.url, workdir, log=lambda message: None)
    started = time.perf_counter()
    party.keygen()
    keygen_seconds = time.perf_counter() - started
    evaluation_key_bytes = len(party.fhe_client().get_serialized_evaluation_keys())
    started = time.perf_counter()
    party.key_id()
    upload_seconds = time.perf_counter() - started
    parties = party.info()["parties"]
    rows = make_credit_data(n_predictions + 1, seed=404)[0]
    latencies, fhe_seconds, sizes = [], [], {}
    for index, row in enumerate(rows):
        ciphertexts = {p: party.encrypt(p, row[c].tolist()) for p, c in parties.items()}
        sizes = {p: len(c) for p, c in ciphertexts.items()}
        started = time.perf_counter()
        result, seconds = party.predict(ciphertexts)
        elapsed = time.perf_counter() - started
        party.decrypt(result)
        if index > 0:  # the first one also loads the key into a worker
            latencies.append(elapsed)
            fhe_seconds.append(seconds)
    return {
        "keygen_seconds": round(keygen_seconds, 2),
        "evaluation_key_bytes": evaluation_key_bytes,
        "key_upload_seconds": round(upload_seconds, 2),
        "ciphertext_bytes": sizes,
        "encrypted_predictions": len(latencies),
        "latency_p50": round(statistics.median(latencies), 3),
        "latency_p95": round(percentile(latencies, 95), 3),
        "server_fhe_p50": round(statistics.median(fhe_seconds), 3),
    }


def measure_throughput(server: GunicornServer, hyperparameters: dict, rounds: int) -> dict:
    """Plaintext /predict rows/s on 10k-row npz batches, and in-process sklearn as the ceiling."""
    X = make_credit_data(10_000, seed=405)[0]
    body = utils.named_ndarrays_to_bytes({"X": X})
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = requests.post(server.url + "/predict", data=body, timeout=120)
        seconds.append(time.perf_counter() - started)
        assert response.status_code == 201, response.text
    X_train, y_train = make_credit_data(6000, seed=0)
    depth = hyperparameters["max_depth"]
    tree = DecisionTreeClassifier(
        max_depth=depth, min_samples_leaf=hyperparameters["min_samples_leaf"], random_state=0
    ).fit(X_train, y_train)
    local = []
    for _ in range(rounds):
        started = time.perf_counter()
        tree.predict(X)
        local.append(time.perf_counter() - started)
    return {
        "http_rows_per_second": round(len(X) / statistics.median(seconds)),
        "sklearn_in_process_rows_per_second": round(len(X) / statistics.median(local)),
    }


def bench_setting(name: str, env: dict, stub: GunicornServer, tmp: Path, n_predictions: int) -> dict:
    print(f">> {name}", flush=True)
    with GunicornServer(
        "app:application", env={**env, "CHALLENGE_HOST": stub.host, "MODEL_DIR": str(tmp / "model")}
    ) as server:
        started = time.perf_counter()
        fit = requests.post(server.url + "/fit", timeout=7200)
        fit_seconds = time.perf_counter() - started
        fit.raise_for_status()
        model = fit.json()["model"]
        print(f"   fit {fit_seconds:.1f} s, {model['pbs_count']} PBS", flush=True)
        accuracy = {
            split: requests.post(server.url + "/evaluate", params={"data_split": split}, timeout=600)
            .json()["evaluation"]["accuracy"]
            for split in ("tuning", "validation")
        }
        result = {
            "fit_seconds": round(fit_seconds, 2),
            "pbs_count": model["pbs_count"],
            "tree_depth": model["tree_depth"],
            "tree_leaves": model["tree_leaves"],
            "hyperparameters": model["hyperparameters"],
            "accuracy": accuracy,
            **measure_encrypted(server, tmp / "party", n_predictions),
            **measure_throughput(server, model["hyperparameters"], int(os.environ.get("BENCH_ROUNDS", "5"))),
            "selection": model.get("selection"),
        }
        print(f"   encrypted p50 {result['latency_p50']} s, p95 {result['latency_p95']} s", flush=True)
        return result


def markdown(results: dict) -> str:
    baseline, served = results.values()
    rows = [
        ("/fit time (train + compile), s", "fit_seconds"),
        ("PBS per encrypted prediction", "pbs_count"),
        ("tree depth / leaves", None),
        ("tuning accuracy", None),
        ("validation accuracy", None),
        ("keygen, s", "keygen_seconds"),
        ("evaluation key, MB", None),
        ("ciphertext per party, bytes", None),
        ("encrypted predictions measured", "encrypted_predictions"),
        ("encrypted latency p50 through HTTP, s", "latency_p50"),
        ("encrypted latency p95 through HTTP, s", "latency_p95"),
        ("server FHE execution p50, s", "server_fhe_p50"),
        ("plaintext /predict, rows/s (10k-row batches, HTTP)", "http_rows_per_second"),
        ("sklearn predict in process, rows/s (ceiling)", "sklearn_in_process_rows_per_second"),
    ]

    def cell(result: dict, label: str, key: str | None):
        if key:
            return result[key]
        if label.startswith("tree"):
            return f"{result['tree_depth']} / {result['tree_leaves']}"
        if label.startswith("tuning"):
            return f"{result['accuracy']['tuning']:.3f}"
        if label.startswith("validation"):
            return f"{result['accuracy']['validation']:.3f}"
        if label.startswith("evaluation key"):
            return f"{result['evaluation_key_bytes'] / 1e6:.1f}"
        return ", ".join(f"{p} {n}" for p, n in result["ciphertext_bytes"].items())

    names = list(results)
    lines = [f"| metric | {names[0]} | {names[1]} | served / baseline |", "|---|---|---|---|"]
    for label, key in rows:
        ratio = ""
        if key and isinstance(baseline.get(key), (int, float)) and baseline[key]:
            ratio = f"{served[key] / baseline[key]:.3g}"
        lines.append(f"| {label} | {cell(baseline, label, key)} | {cell(served, label, key)} | {ratio} |")
    speedup = baseline["latency_p50"] / served["latency_p50"]
    lines.append(f"\nEncrypted p50 speed-up of the served model over the baseline: {speedup:.1f}x.")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Latency (measured seconds per PBS x each candidate's PBS) against held-out accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = results["served: default selection"]
    seconds_per_pbs = served["server_fhe_p50"] / served["pbs_count"]
    candidates = [c for c in (served.get("selection") or {}).get("candidates", []) if c["pbs_count"]]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for candidate in candidates:
        params = candidate["params"]
        chosen = candidate["verdict"] == "chosen"
        axes.scatter(candidate["pbs_count"] * seconds_per_pbs, candidate["holdout_accuracy"],
                     color="tab:green" if chosen else "tab:gray", s=60 if chosen else 25)  # fmt: skip
        axes.annotate(f"d{params['max_depth']} l{params['min_samples_leaf']} b{params['n_bits']}",
                      (candidate["pbs_count"] * seconds_per_pbs, candidate["holdout_accuracy"]),
                      fontsize=7, xytext=(3, 3), textcoords="offset points")  # fmt: skip
    for name, result in results.items():
        axes.scatter(result["latency_p50"], result["accuracy"]["tuning"], marker="*", s=120,
                     label=f"{name} (measured p50, tuning acc)")  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("encrypted prediction latency, s (log)")
    axes.set_ylabel("accuracy")
    axes.set_title("Latency vs accuracy: /fit candidates (estimated) and measured models")
    axes.legend(fontsize=7, loc="lower center")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    rows = os.environ.get("STUB_ROWS", "10000")
    counts = {
        "baseline: concrete-ml DecisionTreeClassifier()": int(os.environ.get("BASELINE_PREDICTIONS", "3")),
        "served: default selection": int(os.environ.get("BENCH_PREDICTIONS", "20")),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp, GunicornServer(
        "challenge_stub.wsgi:application", env={"STUB_ROWS": rows}, workers=1
    ) as stub:
        for index, (name, env) in enumerate(SETTINGS.items()):
            results[name] = bench_setting(name, env, stub, Path(tmp) / str(index), counts[name])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps({"stub_rows": int(rows), **results}, indent=2))
    table = markdown(results)
    (RESULTS / "latest.md").write_text(table + "\n")
    plot(results, RESULTS / "latency_vs_accuracy.png")
    print(table)


if __name__ == "__main__":
    main()
