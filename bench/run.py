"""`make bench`: the same trees on both FHE engines, and the served model, measured through HTTP.

For each setting: /fit time, table lookups (PBS) and circuit complexity, accuracy (the challenge's
evaluation), keygen time, evaluation-key and per-party ciphertext sizes, client-side encryption
time, the first encrypted prediction after the key upload (cold) and warm p50/p95 as a party sees
them (the whole multipart POST /predict), and plaintext /predict throughput. Fits the latency
model selection uses (seconds = a + b * complexity) to the measured warm p50s. Writes
bench/results/latest.{json,md} and the accuracy-latency frontier plot.

Environment: STUB_ROWS (10000), BENCH_PREDICTIONS (20 per setting), BENCH_ROUNDS (5 throughput
rounds), BENCH_SETTINGS (name prefixes to run; default all).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anomed_utils as utils
import numpy as np
import requests

from anonymizer.party import PartyClient
from anonymizer.service.selection import FIXED_SECONDS, SECONDS_PER_COMPLEXITY, SECONDS_PER_INPUT_BYTE
from anonymizer.wire import explain_function, explained_column, rows_function
from challenge_stub.dataset import FEATURE_NAMES, PARTY_LAYOUT, make_credit_data
from devtools.launch import GunicornServer

RESULTS = Path(__file__).parent / "results"
CREDIT = {"ANONYMIZER_PARTIES": json.dumps(PARTY_LAYOUT), "FEATURE_NAMES": json.dumps(FEATURE_NAMES)}


def fixed(engine: str, depth: int, leaf: int, bits: int, trees: int = 1) -> dict:
    return {
        "FHE_ENGINE": engine,
        "TREE_SELECTION": "off",
        "TREE_MAX_DEPTH": str(depth),
        "TREE_MIN_SAMPLES_LEAF": str(leaf),
        "TREE_N_BITS": str(bits),
        "TREE_N_ESTIMATORS": str(trees),
    }


SETTINGS = {
    "served: thermometer, default selection": {},
    "thermometer: tree d3 leaf100 4 bits": fixed("thermometer", 3, 100, 4),
    "concrete-ml: tree d3 leaf100 4 bits": fixed("concrete-ml", 3, 100, 4),
    "thermometer: tree d5 leaf20 6 bits": fixed("thermometer", 5, 20, 6),
    "concrete-ml: tree d5 leaf20 6 bits": fixed("concrete-ml", 5, 20, 6),
    "thermometer: forest 5 x d5 leaf20 4 bits": fixed("thermometer", 5, 20, 4, trees=5),
    "thermometer: boosted 10 x d2 leaf20 4 bits": {
        **fixed("thermometer", 2, 20, 4, trees=10),
        "TREE_BOOSTED": "1",
    },
    "thermometer: additive C0.03 5-bit scores 4 bits": {
        **fixed("thermometer", 5, 20, 4),
        "TREE_ADDITIVE": "1",
        "ADDITIVE_C": "0.03",
        "ADDITIVE_SCORE_BITS": "5",
    },
    "thermometer: additive C0.03 6-bit scores 4 bits": {
        **fixed("thermometer", 5, 20, 4),
        "TREE_ADDITIVE": "1",
        "ADDITIVE_C": "0.03",
        "ADDITIVE_SCORE_BITS": "6",
    },
    # the 5-bit TFHE additive model above, computed under Paillier (the same points)
    "paillier: additive C0.03 5-bit scores 4 bits": {
        **fixed("", 5, 20, 4),
        "ANONYMIZER_ENCRYPTION": "paillier",
        "TREE_ADDITIVE": "1",
        "ADDITIVE_C": "0.03",
        "ADDITIVE_SCORE_BITS": "5",
    },
}
# the floor: one bare lookup on a sum of party bits, at each additive score width
FLOOR_WIDTHS = (4, 5, 6)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_encrypted(server: GunicornServer, workdir: Path, n_predictions: int) -> dict:
    """Keygen, key upload, one cold and `n_predictions` warm encrypted predictions of new rows."""
    party = PartyClient(server.url, workdir, log=lambda message: None)
    sdk_start_seconds = measure_sdk_start(server, workdir.parent / "fresh-party")
    party.codec()  # what a fresh process pays before keygen is measured apart (sdk_start_seconds)
    started = time.perf_counter()
    party.keygen()
    keygen_seconds = time.perf_counter() - started
    evaluation_key_bytes = len(party.codec().evaluation_keys())
    started = time.perf_counter()
    party.key_id()
    upload_seconds = time.perf_counter() - started
    parties = party.info().parties
    rows = make_credit_data(n_predictions + 1, seed=404)[0]
    latencies, fhe_seconds, decrypt_seconds, sizes, cold = [], [], [], {}, None
    encrypt_seconds = {name: [] for name in parties}
    for index, row in enumerate(rows):
        ciphertexts = {}
        for name, columns in parties.items():
            started = time.perf_counter()
            ciphertexts[name] = party.encrypt(name, row[columns].tolist())
            encrypt_seconds[name].append(time.perf_counter() - started)
        sizes = {p: len(c) for p, c in ciphertexts.items()}
        started = time.perf_counter()
        result, seconds = party.predict(ciphertexts)
        elapsed = time.perf_counter() - started
        started = time.perf_counter()
        party.decrypt(result)
        decrypt_seconds.append(time.perf_counter() - started)
        if index == 0:  # the first one after the upload also loads the key into a worker
            cold = elapsed
        else:
            latencies.append(elapsed)
            fhe_seconds.append(seconds)
    return {
        **measure_reasons(party, rows[:6]),
        **measure_explanations(party, rows[:12]),
        **measure_rows(party, rows),
        **measure_later_applicant(server, workdir.parent / "later-party", rows[0]),
        "sdk_start_seconds": round(sdk_start_seconds, 2),
        "keygen_seconds": round(keygen_seconds, 2),
        "evaluation_key_bytes": evaluation_key_bytes,
        "key_upload_seconds": round(upload_seconds, 2),
        # the parties encrypt in parallel in reality: the slowest party's first encryption counts
        "new_applicant_seconds": round(
            sdk_start_seconds
            + keygen_seconds
            + upload_seconds
            + max(times[0] for times in encrypt_seconds.values())
            + cold
            + decrypt_seconds[0],
            2,
        ),
        "ciphertext_bytes": sizes,
        "encrypt_seconds_per_party": {p: round(statistics.median(s), 4) for p, s in encrypt_seconds.items()},
        "decrypt_seconds": round(statistics.median(decrypt_seconds), 4),
        "encrypted_predictions": len(latencies),
        "latency_cold": round(cold, 3),
        "latency_p50": round(statistics.median(latencies), 3),
        "latency_p95": round(percentile(latencies, 95), 3),
        # None where the server does not send its time (Paillier: it could speak of the blinding)
        "server_fhe_p50": round(statistics.median(fhe_seconds), 3)
        if fhe_seconds[0] == fhe_seconds[0]
        else None,
    }


SDK_START = """
import sys, time
started = time.perf_counter()
from anonymizer.party import PartyClient
PartyClient(sys.argv[1], sys.argv[2], log=lambda message: None).codec()
print(time.perf_counter() - started)
"""


def measure_sdk_start(server: GunicornServer, workdir: Path) -> float:
    """Seconds a fresh party process takes from its first import to a codec ready for keygen
    (the SDK's and concrete's imports, /fhe/info, the client specs)."""
    output = subprocess.run(
        [sys.executable, "-c", SDK_START, server.url, str(workdir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(output.stdout.strip().splitlines()[-1])


def measure_later_applicant(server: GunicornServer, workdir: Path, row: np.ndarray) -> dict:
    """Another new applicant once the first one's figures are in (the executors long done with
    the fit): keygen, upload and its first whole decision, in a process that has the SDK loaded."""
    party = PartyClient(server.url, workdir, log=lambda message: None)
    party.codec()
    seconds = []
    for step in (party.keygen, party.key_id, lambda: party.score(party_values(party, row))):
        started = time.perf_counter()
        step()
        seconds.append(round(time.perf_counter() - started, 2))
    return {"later_applicant_seconds": seconds}


def party_values(party: PartyClient, row: np.ndarray) -> dict:
    """Every party's values of `row`, as the SDK takes them."""
    return {p: row[columns].tolist() for p, columns in party.info().parties.items()}


def measure_reasons(party: PartyClient, rows: np.ndarray) -> dict:
    """Reason codes (reasons=1) where served: the first request through HTTP, then the warm p50."""
    if not party.gives_reasons:
        return {"reasons_seconds": None}
    parties = party.info().parties
    seconds = []
    for row in rows:
        started = time.perf_counter()
        party.reasons({name: row[columns].tolist() for name, columns in parties.items()})
        seconds.append(time.perf_counter() - started)
    return {"reasons_seconds": [round(seconds[0], 3), round(statistics.median(seconds[1:]), 3)]}


def measure_explanations(party: PartyClient, rows: np.ndarray) -> dict:
    """Server time of one batched explanation (the applicant feature with the most levels) and
    of reasons; as the applicant waits for them (encrypt, HTTP, decrypt: first, then warm p50),
    one whole decision (`score`), `explain` of that named feature, and, for the denied rows,
    `explain` choosing the feature by the first decision's top reason."""
    info = party.info()
    features = [c for f in info.functions if (c := explained_column(f)) is not None]
    mine = [c for c in features if c in info.parties[info.applicant]]
    if not mine:
        return {"explain_seconds": None}
    feature = max(mine, key=lambda c: len(party.codec().level_values(c)))
    name = (info.feature_names or [])[feature] if info.feature_names else feature
    batch, reasons, decision, named, chosen = [], [], [], [], []
    for row in rows:
        values = party_values(party, row)
        batch.append(party.predict_values(values, explain_function(feature))[1])
        started = time.perf_counter()
        denied = party.score(values).label != info.classes[-1]
        decision.append(time.perf_counter() - started)
        if party.gives_reasons:
            reasons.append(party.predict_values(values, "reasons")[1])
            if denied:  # an approved applicant's explain stops at its reasons
                started = time.perf_counter()
                party.explain(values)
                chosen.append(time.perf_counter() - started)
        started = time.perf_counter()
        party.explain(values, info.applicant, name)
        named.append(time.perf_counter() - started)
    return {
        "explain_levels": len(party.codec().level_values(feature)),
        "explain_server_p50": round(statistics.median(batch[1:]), 4),
        "reasons_server_p50": round(statistics.median(reasons[1:]), 4) if reasons else None,
        "decision_seconds": _first_and_warm(decision),
        "explain_seconds": _first_and_warm(named),
        "explain_chosen_seconds": _first_and_warm(chosen) if len(chosen) > 1 else None,
    }


ROWS_PER_CALL = 4


def measure_rows(party: PartyClient, rows: np.ndarray, calls: int = 6) -> dict:
    """As the applicant waits for ROWS_PER_CALL rows of its own columns decided at once, the other
    parties' fixed (SDK `score_rows`: one `rows/4` call where served, else one call per row):
    first, then warm p50."""
    info = party.info()
    seconds = []
    for call in range(calls):
        group = [rows[(call * ROWS_PER_CALL + i) % len(rows)] for i in range(ROWS_PER_CALL)]
        others = {p: v for p, v in party_values(party, group[0]).items() if p != info.applicant}
        started = time.perf_counter()
        party.score_rows([party_values(party, row)[info.applicant] for row in group], others)
        seconds.append(time.perf_counter() - started)
    return {
        "rows_seconds": _first_and_warm(seconds),
        "rows_in_one_call": rows_function(ROWS_PER_CALL) in info.functions,
    }


def _first_and_warm(seconds: list[float]) -> list[float]:
    return [round(seconds[0], 3), round(statistics.median(seconds[1:]), 3)]


def measure_throughput(server: GunicornServer, rounds: int) -> dict:
    """Plaintext /predict rows/s on 10k-row npz batches."""
    X = make_credit_data(10_000, seed=405)[0]
    body = utils.named_ndarrays_to_bytes({"X": X})
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = requests.post(server.url + "/predict", data=body, timeout=120)
        seconds.append(time.perf_counter() - started)
        assert response.status_code == 201, response.text
    return {"http_rows_per_second": round(len(X) / statistics.median(seconds))}


def bench_setting(name: str, env: dict, stub: GunicornServer, tmp: Path, n_predictions: int) -> dict:
    print(f">> {name}", flush=True)
    with GunicornServer(
        "app:application",
        env={**CREDIT, **env, "CHALLENGE_HOST": stub.host, "MODEL_DIR": str(tmp / "model")},
    ) as server:
        started = time.perf_counter()
        fit = requests.post(server.url + "/fit", timeout=7200)
        fit_seconds = time.perf_counter() - started
        fit.raise_for_status()
        model = fit.json()["model"]
        print(f"   fit {fit_seconds:.1f} s, {model['pbs_count']} PBS", flush=True)
        accuracy = {
            split: requests.post(server.url + "/evaluate", params={"data_split": split}, timeout=600).json()[
                "evaluation"
            ]["accuracy"]
            for split in ("tuning", "validation")
        }
        result = {
            "engine": model["engine"],
            "fit_seconds": round(fit_seconds, 2),
            "pbs_count": model["pbs_count"],
            "complexity": model["complexity"],
            "input_bytes": model["input_bytes"],
            "tree_depth": model["tree_depth"],
            "tree_leaves": model["tree_leaves"],
            "hyperparameters": model["hyperparameters"],
            "accuracy": accuracy,
            **measure_encrypted(server, tmp / "party", n_predictions),
            **measure_throughput(server, int(os.environ.get("BENCH_ROUNDS", "5"))),
            "selection": model.get("selection"),
        }
        print(
            f"   encrypted cold {result['latency_cold']} s, p50 {result['latency_p50']} s, "
            f"p95 {result['latency_p95']} s; tuning {accuracy['tuning']:.3f}",
            flush=True,
        )
        return result


ROWS = [
    ("engine", "engine"),
    ("hyperparameters", None),
    ("tree depth / leaves", None),
    ("table lookups (PBS) per prediction", "pbs_count"),
    ("circuit complexity", "complexity"),
    ("tuning / validation accuracy", None),
    ("/fit time (train + compile), s", "fit_seconds"),
    ("SDK start in a fresh process (imports, /fhe/info, client specs), s", "sdk_start_seconds"),
    ("keygen, s", "keygen_seconds"),
    ("key upload, s", "key_upload_seconds"),
    (
        "new applicant end to end (SDK start + keygen + upload + slowest party's encryption + first decision + decryption), s",
        "new_applicant_seconds",
    ),
    ("a later new applicant: keygen + upload + first whole decision, s", None),
    ("evaluation key, MB", None),
    ("ciphertext per party, bytes", None),
    ("client encryption per party (median), s", None),
    ("decryption (the applicant), s", "decrypt_seconds"),
    ("first prediction after key upload (cold), s", "latency_cold"),
    ("encrypted latency p50 through HTTP, s", "latency_p50"),
    ("encrypted latency p95 through HTTP, s", "latency_p95"),
    ("server FHE execution p50, s", "server_fhe_p50"),
    ("whole decision (SDK score: encrypt + predict + decrypt) first / warm p50, s", None),
    ("reason codes (encrypt + reasons=1 + decrypt) first / warm p50, s", None),
    ("explain a named feature (SDK explain: one batched call) first / warm p50, s", None),
    (
        "explain the top reason's feature (SDK explain: reasons, then one batch; denied rows) first / warm p50, s",
        None,
    ),
    ("4 rows of the applicant, the others' columns fixed (SDK score_rows) first / warm p50, s", None),
    ("warm predictions measured", "encrypted_predictions"),
    ("plaintext /predict, rows/s (10k-row batches)", "http_rows_per_second"),
]


def cell(result: dict, label: str, key: str | None) -> str:
    if key:
        value = result[key]
        return f"{value:.3g}" if isinstance(value, float) and value > 1e4 else str(value)
    if label.startswith("hyper"):
        h = result["hyperparameters"]
        if h.get("model") == "additive":
            kind = "linear" if h.get("linear") else "binned"
            return f"additive {kind} C{h['regularization']:g} {h['score_bits']}-bit {h['n_bits']}b"
        trees = f"{h.get('n_estimators', 1)} x " if h.get("n_estimators", 1) > 1 else ""
        trees = f"boosted {trees}" if h.get("model") == "boosted" else trees
        return f"{trees}d{h['max_depth']} leaf{h['min_samples_leaf']} {h['n_bits']}b"
    if label.startswith("tree"):
        return f"{result['tree_depth']} / {result['tree_leaves']}"
    if label.startswith("tuning"):
        return f"{result['accuracy']['tuning']:.3f} / {result['accuracy']['validation']:.3f}"
    if label.startswith("client encryption"):
        return ", ".join(f"{p} {s}" for p, s in result["encrypt_seconds_per_party"].items())
    if label.startswith("a later new applicant"):
        later = result.get("later_applicant_seconds")
        return f"{sum(later):.2f} = {' + '.join(str(s) for s in later)}" if later else "—"
    if label.startswith("whole decision"):
        whole = result.get("decision_seconds")
        return f"{whole[0]} / {whole[1]}" if whole else "—"
    if label.startswith("reason codes"):
        reasons = result.get("reasons_seconds")
        return f"{reasons[0]} / {reasons[1]}" if reasons else "—"
    if label.startswith("4 rows"):
        rows = result.get("rows_seconds")
        calls = "one call" if result.get("rows_in_one_call") else "a call per row"
        return f"{rows[0]} / {rows[1]} ({calls})" if rows else "—"
    if label.startswith("explain"):
        explain = result.get(
            "explain_seconds" if label.startswith("explain a named") else "explain_chosen_seconds"
        )
        return f"{explain[0]} / {explain[1]}" if explain else "—"
    if label.startswith("evaluation key"):
        return f"{result['evaluation_key_bytes'] / 1e6:.1f}"
    return ", ".join(f"{p} {n}" for p, n in result["ciphertext_bytes"].items())


def measure_floor(width: int, n_runs: int = 20) -> dict:
    """Server time of one bare lookup at `width` bits on a sum of 60 encrypted bits (no HTTP)."""
    from concrete import fhe

    from anonymizer.engines.thermometer.leafsum import COMPILE_OPTIONS

    weights = (np.arange(60) < 2**width - 1).astype(np.int64)
    table = fhe.LookupTable([v // 2 for v in range(2**width)])
    compiler = fhe.Compiler(lambda bits: table[np.sum(bits * weights)], {"bits": "encrypted"})
    circuit = compiler.compile([np.zeros(60, dtype=np.int64), np.ones(60, dtype=np.int64)], **COMPILE_OPTIONS)
    circuit.keygen()
    encrypted = circuit.encrypt(np.ones(60, dtype=np.int64))
    keys = circuit.client.evaluation_keys
    seconds = []
    for _ in range(n_runs + 1):
        started = time.perf_counter()
        circuit.server.run(encrypted, evaluation_keys=keys)
        seconds.append(time.perf_counter() - started)
    return {
        "width": width,
        "pbs_count": int(circuit.programmable_bootstrap_count),
        "complexity": float(circuit.complexity),
        "cold_seconds": round(seconds[0], 4),
        "warm_p50_seconds": round(statistics.median(seconds[1:]), 4),
    }


def floor_markdown(floors: list[dict]) -> str:
    rows = [
        f"{f['width']}-bit lookup: {f['pbs_count']} PBS, complexity {f['complexity']:.3g}, "
        f"first run {f['cold_seconds']} s, warm p50 {f['warm_p50_seconds']} s"
        for f in floors
    ]
    return (
        "\nFloor, one bare lookup on a sum of 60 encrypted bits, server time without HTTP: "
        + "; ".join(rows)
        + "."
    )


def ratios_markdown(results: dict, floors: list[dict]) -> str:
    """The served model's figures against each other, all from this one run (ratios travel
    between machines where absolute times do not)."""
    served = next(r for name, r in results.items() if name.startswith("served"))
    width = served["hyperparameters"].get("score_bits")
    floor = next((f for f in floors if f["width"] == width), None)
    decision = served["server_fhe_p50"]
    parts = []
    if floor is not None:
        parts.append(
            f"served decision / one bare {width}-bit lookup (server time) = "
            f"{decision / floor['warm_p50_seconds']:.2f}"
        )
    if served.get("reasons_server_p50"):
        parts.append(f"reasons / decision (server time) = {served['reasons_server_p50'] / decision:.2f}")
    if served.get("explain_seconds"):
        parts.append(
            f"one batched explanation of {served['explain_levels']} levels / decision (server time) = "
            f"{served['explain_server_p50'] / decision:.2f}; as the applicant waits (encrypt, HTTP, "
            f"decrypt; warm p50), the SDK's explain of a named feature / its whole decision (score) = "
            f"{served['explain_seconds'][1] / served['decision_seconds'][1]:.2f}"
        )
    if served.get("explain_chosen_seconds"):
        parts.append(
            "explain choosing the feature by reasons (denied rows) / the whole decision = "
            f"{served['explain_chosen_seconds'][1] / served['decision_seconds'][1]:.2f}"
        )
    if served.get("rows_seconds"):
        parts.append(
            f"{ROWS_PER_CALL} rows of the applicant in one call (SDK score_rows) / the whole decision = "
            f"{served['rows_seconds'][1] / served['decision_seconds'][1]:.2f} (one call per row: {ROWS_PER_CALL})"
        )
    parts.append(
        f"new applicant {served['new_applicant_seconds']} s = SDK start {served['sdk_start_seconds']} s + "
        f"keygen {served['keygen_seconds']} s + key "
        f"upload {served['key_upload_seconds']} s + first decision {served['latency_cold']} s + the rest "
        "(its upload comes seconds after the fit, while the executors still load the new model)"
    )
    if served.get("later_applicant_seconds"):
        keygen, upload, first = served["later_applicant_seconds"]
        parts.append(
            f"a later new applicant {keygen + upload + first:.2f} s = keygen {keygen} s + upload {upload} s "
            f"+ first whole decision {first} s (+ SDK start in a fresh process)"
        )
    return "\nServed model, ratios of this run: " + "; ".join(parts) + "."


def latency_model(results: dict) -> tuple[float, float, float]:
    """Least-squares fit of warm p50 = a + b * complexity + c * input bytes over the thermometer
    circuits that a latency budget of about a second can admit (large ones parallelise better)."""
    small = [r for r in results.values() if r["engine"] == "thermometer" and r["latency_p50"] < 1]
    design = np.array([[1.0, r["complexity"], r["input_bytes"]] for r in small])
    seconds = np.array([r["latency_p50"] for r in small])
    a, b, c = np.linalg.lstsq(design, seconds, rcond=None)[0]
    return float(a), float(b), float(c)


def markdown(results: dict) -> str:
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(results[n], label, key) for n in names) + " |")
    for depth in ("d3", "d5"):
        pair = [n for n in names if f"tree {depth}" in n]
        if len(pair) == 2:
            thermo, cml = (results[n] for n in sorted(pair, key=lambda n: not n.startswith("thermo")))
            lines.append(
                f"\nSame {depth} tree hyperparameters: concrete-ml / thermometer = "
                f"{cml['complexity'] / thermo['complexity']:.1f}x complexity, "
                f"{cml['latency_p50'] / thermo['latency_p50']:.1f}x warm p50 latency."
            )
    if sum(r["engine"] == "thermometer" and r["latency_p50"] < 1 for r in results.values()) < 3:
        return "\n".join(lines)  # a partial run: too few points to fit the latency model
    a, b, c = latency_model(results)
    lines.append(
        f"\nLatency model fitted to the thermometer warm p50s under 1 s: seconds = {a:.3f} + "
        f"{b:.3g} x complexity + {c:.3g} x input bytes (selection uses {FIXED_SECONDS} + "
        f"{SECONDS_PER_COMPLEXITY:.3g} x complexity + {SECONDS_PER_INPUT_BYTE:.3g} x input bytes)."
    )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Held-out accuracy against latency: /fit's priced candidates and the measured settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = results["served: thermometer, default selection"]
    candidates = [
        c for c in (served.get("selection") or {}).get("candidates", []) if c.get("estimated_seconds")
    ]
    figure, axes = plt.subplots(figsize=(10, 6))
    for family, color in (("tree", "tab:gray"), ("forest", "tab:olive"), ("boosted", "tab:cyan")):
        chosen = [c for c in candidates if c["model"].startswith(family)]
        axes.scatter(
            [c["estimated_seconds"] for c in chosen],
            [c["cv_accuracy"] for c in chosen],
            color=color,
            s=18,
            label=f"/fit candidates: {family} (estimated latency, CV accuracy)",
        )
    for name, result in results.items():
        marker = {"thermometer": "*", "paillier": "s"}.get(result["engine"], "D")
        axes.scatter(result["latency_p50"], result["accuracy"]["tuning"], marker=marker, s=110)
        axes.annotate(
            name,
            (result["latency_p50"], result["accuracy"]["tuning"]),
            fontsize=8,
            xytext=(5, -3),
            textcoords="offset points",
        )
    axes.set_xscale("log")
    latencies = [r["latency_p50"] for r in results.values()]
    axes.set_xlim(min(latencies) * 0.7, max(latencies) * 4)  # room for the labels
    axes.set_xlabel("encrypted prediction latency, s (log scale; measured: warm p50 through HTTP)")
    axes.set_ylabel("accuracy (candidates: cross-validated; measured: tuning split)")
    axes.set_title(
        "Accuracy vs encrypted latency (stars: thermometer, squares: Paillier, diamonds: concrete-ml)"
    )
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def chosen_settings() -> dict:
    """SETTINGS, or those whose names start with one of BENCH_SETTINGS (comma-separated), e.g.
    `BENCH_SETTINGS=served` for the served model's figures and ratios alone."""
    prefixes = [p.strip() for p in os.environ.get("BENCH_SETTINGS", "").split(",") if p.strip()]
    return {n: env for n, env in SETTINGS.items() if not prefixes or any(n.startswith(p) for p in prefixes)}


def main() -> None:
    rows = os.environ.get("STUB_ROWS", "10000")
    n_predictions = int(os.environ.get("BENCH_PREDICTIONS", "20"))
    results = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        GunicornServer("challenge_stub.wsgi:application", env={"STUB_ROWS": rows}, workers=1) as stub,
    ):
        for index, (name, env) in enumerate(chosen_settings().items()):
            results[name] = bench_setting(name, env, stub, Path(tmp) / str(index), n_predictions)
    floors = [measure_floor(width) for width in FLOOR_WIDTHS]
    RESULTS.mkdir(exist_ok=True)
    every = len(results) == len(SETTINGS)
    name = "latest" if every else "partial"  # a partial run never replaces the full table
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"stub_rows": int(rows), **results, "floor": floors}, indent=2)
    )
    table = markdown(results) + "\n" + floor_markdown(floors) + "\n" + ratios_markdown(results, floors)
    (RESULTS / f"{name}.md").write_text(table + "\n")
    if every:
        plot(results, RESULTS / "latency_vs_accuracy.png")
    print(table)


if __name__ == "__main__":
    main()
