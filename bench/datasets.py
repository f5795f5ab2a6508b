"""`make datasets`: the default anonymizer on several small real datasets, against float scikit-learn.

For each dataset the stub serves (the synthetic credit set and scikit-learn's bundled
breast_cancer, wine and iris): `/fit` with default settings (nothing configured but the challenge),
cross-validated accuracy of the chosen model (from `/fit`'s candidate table), held-out accuracy
(the challenge's tuning and validation splits), warm encrypted latency through HTTP, and the
membership-inference audit (rf, gb, gap). The reference is the best float scikit-learn model of the
chosen family (a tree, or a 100-tree random forest), tuned by 5-fold grid search on the same
training rows. Writes bench/results/datasets.{json,md}.
"""

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.tree import DecisionTreeClassifier

from anonymizer.audit import audit_anonymizer
from anonymizer.client import PartyClient
from anonymizer.launch import GunicornServer
from challenge_stub.app import split_bundled, split_credit

RESULTS = Path(__file__).parent / "results"
DATASETS = ("credit", "breast_cancer", "wine", "iris")
GRID = {"max_depth": [2, 3, 4, 5, 6, 8, None], "min_samples_leaf": [1, 2, 5, 10, 20]}


def splits_of(name: str):
    return split_credit(10_000, 0) if name == "credit" else split_bundled(name)


def float_reference(family: str, splits) -> dict:
    """The best float scikit-learn model of `family`, tuned on the training split."""
    (X, y), (X_tune, y_tune), (X_val, y_val) = splits
    estimator = (
        RandomForestClassifier(n_estimators=100, random_state=0)
        if family == "forest"
        else DecisionTreeClassifier(random_state=0)
    )
    search = GridSearchCV(estimator, GRID, cv=5).fit(X, y)
    X_held, y_held = np.vstack([X_tune, X_val]), np.concatenate([y_tune, y_val])
    return {
        "params": search.best_params_,
        "cv_accuracy": round(float(search.best_score_), 4),
        "held_out_accuracy": round(float(np.mean(search.predict(X_held) == y_held)), 4),
    }


def encrypted_latency(url: str, X: np.ndarray, workdir: Path, n: int = 6) -> float:
    """Warm p50 of encrypted predictions through HTTP (the first, cold one excluded)."""
    party = PartyClient(url, workdir, log=lambda message: None)
    parties = party.info()["parties"]
    seconds = []
    for row in X[: n + 1]:
        ciphertexts = {p: party.encrypt(p, row[c].tolist()) for p, c in parties.items()}
        started = time.perf_counter()
        party.predict(ciphertexts)
        seconds.append(time.perf_counter() - started)
    return round(statistics.median(seconds[1:]), 3)


def evaluate(name: str, tmp: Path) -> dict:
    print(f">> {name}", flush=True)
    splits = splits_of(name)
    (X, y), (X_tune, y_tune), (X_val, y_val) = splits
    y_held = np.concatenate([y_tune, y_val])
    env = {"STUB_DATASET": name, "STUB_ROWS": "10000"}
    with GunicornServer("challenge_stub.wsgi:application", env=env, workers=1) as stub:
        with GunicornServer(
            "app:application", env={"CHALLENGE_HOST": stub.host, "MODEL_DIR": str(tmp / name)}
        ) as anonymizer:
            fit = requests.post(anonymizer.url + "/fit", timeout=3600)
            fit.raise_for_status()
            model = fit.json()["model"]
            selection = model["selection"]
            chosen = next(c for c in selection["candidates"] if c["verdict"].startswith("chosen"))
            audit = audit_anonymizer(stub.url, anonymizer.url, "fhe_anonymizer")
            latency = encrypted_latency(anonymizer.url, X_val, tmp / f"{name}-party")
    held_out = (
        audit["utility"]["tuning"] * len(y_tune) + audit["utility"]["validation"] * len(y_val)
    ) / len(y_held)
    result = {
        "rows": {"training": len(y), "tuning": len(y_tune), "validation": len(y_val)},
        "classes": int(len(np.unique(y))),
        "majority_held_out": round(float(np.max(np.bincount(y_held)) / len(y_held)), 4),
        "chosen": chosen["model"],
        "fallback": selection["fallback"],
        "cv_accuracy": chosen["cv_accuracy"],
        "cv_accuracy_sd": chosen["cv_accuracy_sd"],
        "held_out_accuracy": round(held_out, 4),
        "lookups": model["pbs_count"],
        "encrypted_p50_seconds": latency,
        "advantage": {a: {"mean": round(r["mean_advantage"], 3),
                          "ci95": [round(v, 3) for v in r["advantage_ci95"]]}
                      for a, r in audit["attacks"].items()},  # fmt: skip
        "float_reference": float_reference(model["hyperparameters"]["model"], splits),
    }
    print(f"   {json.dumps(result)}", flush=True)
    return result


def markdown(results: dict) -> str:
    lines = [
        "| dataset | rows (train/tune/val), classes | majority | served model | CV acc (± sd) | held-out acc | "
        "float sklearn, same family: CV / held-out | MIA advantage rf / gb / gap [95 % CI of the largest] | "
        "encrypted p50, s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rows = r["rows"]
        reference = r["float_reference"]
        worst = max(r["advantage"], key=lambda a: r["advantage"][a]["mean"])
        advantages = " / ".join(f"{r['advantage'][a]['mean']:+.3f}" for a in ("rf", "gb", "gap"))
        ci = r["advantage"][worst]["ci95"]
        fallback = " (fallback)" if r["fallback"] else ""
        lines.append(
            f"| {name} | {rows['training']}/{rows['tuning']}/{rows['validation']}, {r['classes']} | "
            f"{r['majority_held_out']:.3f} | {r['chosen']}{fallback} | {r['cv_accuracy']:.3f} "
            f"(± {r['cv_accuracy_sd']:.3f}) | {r['held_out_accuracy']:.3f} | "
            f"{reference['cv_accuracy']:.3f} / {reference['held_out_accuracy']:.3f} | "
            f"{advantages} [{ci[0]:+.3f}, {ci[1]:+.3f}] | {r['encrypted_p50_seconds']} |"
        )
    return "\n".join(lines)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: evaluate(name, Path(tmp)) for name in DATASETS}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "datasets.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (RESULTS / "datasets.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
