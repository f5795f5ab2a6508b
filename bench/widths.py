"""What each additive score width buys: accuracy on `make datasets`' sets, and its cost to a new applicant.

For each dataset of bench/datasets.py (the stub's training rows and party layout) and each score
width in WIDTHS: every additive candidate selection would offer at that width (binned and linear,
each regularization of the default SelectionPolicy, its coarsest encoding), cross-validated by
selection's own `_measure` on selection's folds; the best one by CV accuracy, refitted on the
training rows and scored in the clear on the held-out rows (tuning + validation; the thermometer
model's clear prediction is the encrypted one). For COSTED datasets, the most accurate candidate
at each width that compiles is compiled as `_price` does (the decision circuit alone, no reasons
module) and keyed here: compressed evaluation keys as a party uploads them (MB = 10^6 bytes),
keygen seconds, and the server's warm run seconds (median of RUNS after one cold run, no HTTP).
Writes bench/results/widths.{json,md}.
"""

import dataclasses
import json
import os
import statistics
import time

import numpy as np

from anonymizer.engines.registry import engine_class
from anonymizer.parties import PartyLayout
from anonymizer.service.selection import COST_PROBE_ROWS, _measure, candidate_grid, folds_for
from anonymizer.settings import SelectionPolicy
from bench.datasets import DATASETS, RESULTS, splits_of
from challenge_stub.dataset import PARTY_LAYOUT, german_credit_layout

WIDTHS = (3, 4, 5, 6, 7)
COSTED = ("credit", "digits")
RUNS = 5
ENGINE = engine_class("thermometer")


def layout_of(name: str, n_features: int) -> PartyLayout:
    """The party layout the stub describes for `name` (one data holder where it names none)."""
    layouts = {"credit": PARTY_LAYOUT, "german_credit": german_credit_layout()}
    return PartyLayout(layouts[name]) if name in layouts else PartyLayout.single(n_features)


def additive_candidates(policy: SelectionPolicy, y: np.ndarray, width: int) -> list:
    """Selection's additive grid restricted to one score width."""
    at_width = dataclasses.replace(policy, score_bits=(width,))
    n_rows = int(len(y) * (1 - 1 / policy.folds))
    return candidate_grid(at_width, n_rows, False, len(np.unique(y)), additive=True, trees=False)


def cost(candidate, layout: PartyLayout, X: np.ndarray, y: np.ndarray) -> dict:
    """Key size, keygen and warm server time of the candidate's compiled decision circuit."""
    model = ENGINE.build(X, y, layout, candidate.params)
    circuit = model.compile(X[:COST_PROBE_ROWS]).runnable.decision_circuit
    started = time.perf_counter()
    circuit.keygen(force=True)
    keygen = time.perf_counter() - started
    keys = circuit.client.evaluation_keys
    encrypted = circuit.encrypt(*model.circuit_arguments(X[:1])[0])
    encrypted = encrypted if isinstance(encrypted, tuple) else (encrypted,)
    seconds = []
    for _ in range(RUNS + 1):
        started = time.perf_counter()
        circuit.server.run(*encrypted, evaluation_keys=keys)
        seconds.append(time.perf_counter() - started)
    return {
        "model": candidate.params.label(),
        "cv_accuracy": round(candidate.cv_accuracy, 4),
        "lookups": int(circuit.programmable_bootstrap_count),
        "key_mb": round(len(keys.serialize()) / 1e6, 1),
        "keygen_seconds": round(keygen, 2),
        "server_cold_seconds": round(seconds[0], 3),
        "server_warm_seconds": round(statistics.median(seconds[1:]), 3),
    }


def first_compiling_cost(ranked: list, layout: PartyLayout, X: np.ndarray, y: np.ndarray) -> dict:
    """The cost of the most accurate candidate that compiles (the others' errors noted)."""
    skipped = []
    for candidate in ranked:
        try:
            return {**cost(candidate, layout, X, y), "skipped": skipped}
        except Exception as error:  # NotCompilable (every point rounds to zero), concrete errors
            skipped.append(f"{candidate.params.label()}: {error}")
    return {"skipped": skipped}


def evaluate(name: str) -> dict:
    """Every width's best additive candidate on `name`: CV, held-out, and (COSTED) its price."""
    (X, y), (X_tune, y_tune), (X_val, y_val) = splits_of(name)
    X_held, y_held = np.vstack([X_tune, X_val]), np.concatenate([y_tune, y_val])
    layout, policy = layout_of(name, X.shape[1]), SelectionPolicy()
    splitter, folds = folds_for(y, policy)
    splits = list(splitter.split(X, y))
    result = {
        "classes": int(len(np.unique(y))),
        "rows": {"training": len(y), "held_out": len(y_held)},
        "majority_held_out": round(float(np.max(np.bincount(y_held)) / len(y_held)), 4),
        "folds": folds,
        "widths": {},
    }
    for width in WIDTHS:
        started = time.perf_counter()
        grid = additive_candidates(policy, y, width)
        measured = [_measure(ENGINE, params, layout, X, y, splits) for params in grid]
        ranked = sorted(
            (c for c in measured if not c.verdict.startswith("skipped")), key=lambda c: -c.cv_accuracy
        )
        best = ranked[0]
        predicted = ENGINE.build(X, y, layout, best.params).predict(X_held)
        row = {
            "model": best.params.label(),
            "candidates": len(grid),
            "skipped": len(measured) - len(ranked),
            "cv_accuracy": round(best.cv_accuracy, 4),
            "cv_accuracy_sd": round(best.cv_accuracy_sd, 4),
            "held_out_accuracy": round(float(np.mean(predicted == y_held)), 4),
            "predicts_one_class": bool(len(np.unique(predicted)) == 1),
            "accuracy_seconds": round(time.perf_counter() - started, 1),
        }
        if name in COSTED:
            row["cost"] = first_compiling_cost(ranked, layout, X, y)
        result["widths"][width] = row
        print(f"   {name} {width} bits: {json.dumps(row)}", flush=True)
    return result


def markdown(results: dict, run: dict) -> str:
    """Two tables: dataset x width -> CV / held-out accuracy; width -> cost, per costed dataset."""
    header = " | ".join(f"{w} bits: CV / held-out (best candidate)" for w in WIDTHS)
    lines = [f"| dataset (classes) | majority, held-out | {header} |", "|---" * (len(WIDTHS) + 2) + "|"]
    for name, r in results.items():
        cells = [
            f"{c['cv_accuracy']:.3f} / {c['held_out_accuracy']:.3f} ({short(c['model'])})"
            + (" †" if c["predicts_one_class"] else "")
            for c in r["widths"].values()
        ]
        lines.append(
            f"| {name} ({r['classes']}) | {r['majority_held_out']:.3f} | " + " | ".join(cells) + " |"
        )
    lines.append("\n† the model answers one class for every held-out row at that width.")
    lines += [
        "",
        "| dataset | width | priced candidate (CV) | lookups | evaluation keys, MB | keygen, s | "
        "server run, warm median, s (cold) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in COSTED:
        for width, c in results[name]["widths"].items():
            p = c["cost"]
            if "key_mb" not in p:
                lines.append(f"| {name} | {width} | none compiles | | | | |")
                continue
            lines.append(
                f"| {name} | {width} | {short(p['model'])} ({p['cv_accuracy']:.3f}) | {p['lookups']} | "
                f"{p['key_mb']} | {p['keygen_seconds']} | "
                f"{p['server_warm_seconds']} ({p['server_cold_seconds']}) |"
            )
    lines.append(
        "\nPriced: the most accurate candidate at that width that compiles (the JSON's `skipped` names the "
        "others and why); the decision circuit alone, keys made and run here without HTTP. "
        f"Run: {run['seconds']} s in all; every cell measured all its candidates (the slowest cell's "
        f"cross-validation took {run['slowest_cell_seconds']} s, no cap); 2 shared cores, 1-minute "
        "load average {:.1f} at the start, {:.1f} at the end.".format(*run["load_average_1min"])
    )
    return "\n".join(lines)


def short(label: str) -> str:
    """`binned C 0.1` from `additive binned C 0.1, 5-bit scores, 4 bits`."""
    return label.removeprefix("additive ").split(",")[0]


def main() -> None:
    started, load = time.perf_counter(), os.getloadavg()[0]
    results = {}
    for name in DATASETS:
        print(f">> {name}", flush=True)
        results[name] = evaluate(name)
    run = {
        "seconds": round(time.perf_counter() - started),
        "slowest_cell_seconds": max(
            c["accuracy_seconds"] for r in results.values() for c in r["widths"].values()
        ),
        "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "widths.json").write_text(json.dumps({"run": run, "datasets": results}, indent=2))
    table = markdown(results, run)
    (RESULTS / "widths.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
