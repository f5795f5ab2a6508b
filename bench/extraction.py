"""`make extraction`: what a key holder recovers of the served scorecard from its own queries, with
the Paillier answers' blinding (scheme.blinding, the very sampler the server uses) and without it
(the exact score, which is what a TFHE two-class additive answer decrypts to).

The model is the stub's default additive model (binned points, C 0.003, 5-bit scores, 4-bit
encoding) on the stub's training rows; the attacker queries fresh rows from the same population,
as an applicant with the private key can, and fits:

- exact scores: least squares of the score on the bits (then rounded) — the points themselves;
- blinded answers, decisions only: a logistic regression on the decisions (v > 0);
- blinded answers, magnitudes too: least squares of sign(v) * log2 |v| on the bits;
- one input asked again and again: the scores consistent with every answer seen so far;
- a malicious applicant (devtools/attacks.py) through the server's real Paillier arithmetic, with
  and without the bit proofs: powers of B at its positions (the points and the co-parties' sum
  from one answer), non-bits, non-monotone bits.

Writes bench/results/extraction.json and extraction.md; docs/privacy.md includes the table.
"""

import json
import math
import secrets
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from anonymizer.engines.paillier import proofs, scheme
from anonymizer.engines.paillier.answers import BlindedScores
from anonymizer.engines.paillier.model import PaillierModel
from anonymizer.engines.thermometer.model import ThermometerModel
from anonymizer.parties import PartyLayout
from anonymizer.settings import ModelSpec
from challenge_stub.dataset import PARTY_LAYOUT, make_credit_data
from devtools.attacks import B, forged_part, read_powers_of_b

RESULTS = Path(__file__).resolve().parent / "results"
QUERIES = (50, 100, 200, 500, 1000, 5000)
PARAMS = ModelSpec(n_bits=4, additive=True, regularization=0.003, score_bits=5)


def served_model():
    X, y = make_credit_data(10_000, seed=0)
    return ThermometerModel.build(X[:6000], y[:6000], PartyLayout(PARTY_LAYOUT), PARAMS)


def truth(model, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bits, the exact two-class decision value o = score + shift) of rows X."""
    bits = np.concatenate(model.party_bits(X), axis=1)
    return bits, model.outputs(X)[:, 0] + model.program.score_shift


def blinded_values(o: np.ndarray) -> list[int]:
    values = []
    for x in o.tolist():
        u, shift = scheme.blinding_factor()
        rho = u << shift
        values.append(rho * int(x) - secrets.randbelow(rho))
    return values


def agreement(weights: np.ndarray, intercept: float, bits: np.ndarray, decisions: np.ndarray) -> float:
    return float(np.mean(((bits @ weights + intercept) > 0) == decisions))


def attacks(model, n: int, fresh_bits: np.ndarray, fresh_decisions: np.ndarray, seed: int) -> dict:
    bits, o = truth(model, make_credit_data(n, seed=seed)[0])
    true_weights = np.concatenate(model.program.weights)[:, 0]
    design = np.column_stack([bits, np.ones(n)])
    exact, *_ = np.linalg.lstsq(design, o.astype(np.float64), rcond=None)
    varying = bits.std(axis=0) > 0  # bits the queries never move cannot be learnt by anyone
    recovered = np.rint(exact[:-1])[varying] == true_weights[varying]
    values = blinded_values(o)
    decisions = np.array([v > 0 for v in values])
    row = {
        "queries": n,
        "exact_points_recovered": round(float(np.mean(recovered)), 3),
        "exact_agreement": round(
            agreement(np.rint(exact[:-1]), np.rint(exact[-1]), fresh_bits, fresh_decisions), 4
        ),
    }
    if decisions.all() or not decisions.any():
        row["blinded_decisions_agreement"] = round(float(np.mean(fresh_decisions == decisions[0])), 4)
    else:
        fit = LogisticRegression(C=1.0, max_iter=5000).fit(bits, decisions)
        row["blinded_decisions_agreement"] = round(
            agreement(fit.coef_[0], fit.intercept_[0], fresh_bits, fresh_decisions), 4
        )
    magnitudes = np.array([math.copysign(math.log2(abs(v) + 1), v) for v in values])
    fitted, *_ = np.linalg.lstsq(design, magnitudes, rcond=None)
    row["blinded_magnitudes_agreement"] = round(
        agreement(fitted[:-1], fitted[-1], fresh_bits, fresh_decisions), 4
    )
    row["blinded_points_recovered"] = round(
        float(np.mean(np.rint(fitted[:-1])[varying] == true_weights[varying])), 3
    )
    return row


def consistent_scores(value: int, candidates: set[int]) -> set[int]:
    """The positive scores x some rho = 2^j * u could have turned into `value` (v in (rho(x-1), rho x])."""
    low, high = 1 << (scheme.RHO_BITS - 1), 1 << scheme.RHO_BITS
    kept = set()
    for x in candidates:
        # rho in [v / x, v / (x - 1)) must meet some [2^j low, 2^j high)
        lo, hi = value / x, (value / (x - 1) if x > 1 else math.inf)
        if any(lo < (high << j) and hi > (low << j) for j in range(scheme.RHO_SHIFTS)):
            kept.add(x)
    return kept


def repeated_queries(model, rows: int = 20, limit: int = 3000) -> dict:
    """Answers needed on one approved input before its exact score is the only one consistent."""
    _, o = truth(model, make_credit_data(400, seed=9)[0])
    needed = []
    for x in [int(v) for v in o if v > 0][:rows]:
        candidates, asked = set(range(1, 2**PARAMS.score_bits + 1)), 0
        while len(candidates) > 1 and asked < limit:
            candidates = consistent_scores(blinded_values(np.array([x]))[0], candidates)
            asked += 1
        needed.append(asked if len(candidates) == 1 else None)
    found = [n for n in needed if n is not None]
    return {
        "rows": len(needed),
        "exact_after_median": int(np.median(found)) if found else None,
        "not_exact_within": sum(n is None for n in needed),
        "limit": limit,
    }


def malicious_applicant(positions: int = 5) -> list[dict]:
    """Each strategy once against the server's Paillier computation, without proofs (as before
    the proofs) and with them (PaillierModel.verified_input, what the server runs at the door)."""
    from phe import generate_paillier_keypair

    X, y = make_credit_data(10_000, seed=0)
    model = PaillierModel.train(X[:6000], y[:6000], PartyLayout(PARTY_LAYOUT), PARAMS)
    model._keys_digest = "unsaved"  # a stored model's digest names its specs; this one is in memory
    public_key, private_key = generate_paillier_keypair(n_length=scheme.MIN_MODULUS_BITS)
    key = scheme.ServerKey(public_key)
    row = make_credit_data(1, seed=5)[0]
    honest = [z[0].tolist() for z in model.party_bits(row)]
    applicant = model.layout.names[0]
    sizes = model.column_sizes(applicant)
    strategies = {
        "powers of B (one answer)": [0] * len(honest[0]),
        "a non-bit (2 at one position)": [2] + honest[0][1:],
        "non-monotone bits": list(honest[0]),
    }
    wide = next(c for c, k in enumerate(sizes) if k > 1)  # a column of 0...01: no thermometer code
    start = sum(sizes[:wide])
    strategies["non-monotone bits"][start : start + sizes[wide]] = [0] * (sizes[wide] - 1) + [1]
    strategies["powers of B (one answer)"][:positions] = [B ** (i + 1) for i in range(positions)]
    points = np.concatenate(model.program.weights)[:, 0]
    co_party_sum = int(BlindedScores.constants(model.program)[0]) + sum(
        int(np.dot(bits, w[:, 0])) for bits, w in zip(honest[1:], model.program.weights[1:])
    )
    rows = []
    for name, plaintexts in strategies.items():
        context = proofs.ProofContext("key", model.keys_digest, applicant)
        part = forged_part(public_key, plaintexts, sizes, context)
        packed = part[: len(plaintexts) * scheme.width(public_key)]
        co_parts = [scheme.pack(public_key, scheme.encrypt_bits(public_key, np.array(b))) for b in honest[1:]]
        answer = model.run_encrypted([packed, *co_parts], key)  # the server without proofs
        value = scheme.decrypt_signed(private_key, scheme.unpack(public_key, answer, 1, "result"))[0]
        read = read_powers_of_b(value, positions) if name.startswith("powers") else None
        recovered = (
            f"the co-parties' sum and constant {'exactly' if read and read[0] == co_party_sum else 'not'}; "
            f"{sum(int(w == p) for w, p in zip(read[1], points[:positions])) if read else 0} of {positions} points"
            if name.startswith("powers")
            else "a decision on an input no party can hold"
        )
        try:
            model.verified_input(scheme.public_key_bytes(public_key), "key", applicant, part)
            defended = "accepted"
        except ValueError as error:
            defended = f"refused (400): {str(error).split(': ', 1)[0]}"
        rows.append({"strategy": name, "without_proofs": recovered, "with_proofs": defended})
    return rows


def markdown(result: dict) -> str:
    lines = [
        "| queries | exact scores: points recovered | exact scores: decision agreement | blinded, decisions: agreement | blinded, magnitudes: agreement | blinded: points recovered |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["attacks"]:
        lines.append(
            f"| {row['queries']} | {row['exact_points_recovered']:.3f} | {row['exact_agreement']:.4f} | "
            f"{row['blinded_decisions_agreement']:.4f} | {row['blinded_magnitudes_agreement']:.4f} | "
            f"{row['blinded_points_recovered']:.3f} |"
        )
    repeat = result["repeated_queries"]
    lines += [
        "",
        f"Baseline: a constant predictor agrees with the served decisions on {result['constant_agreement']:.4f} "
        f"of fresh rows. One input asked again and again (blinded, {repeat['rows']} approved inputs): its "
        f"exact score is the only one consistent with all answers after a median of "
        f"{repeat['exact_after_median']} answers ({repeat['not_exact_within']} not within {repeat['limit']}).",
        "",
        "A malicious applicant (it holds the private key) through the server's Paillier arithmetic:",
        "",
        "| strategy | without the bit proofs: it learns | with them |",
        "|---|---|---|",
        *[f"| {r['strategy']} | {r['without_proofs']} | {r['with_proofs']} |" for r in result["malicious"]],
        "",
        f"(`make extraction`: {result['model']}, {result['weights']} points of which "
        f"{result['nonzero_weights']} non-zero; fresh rows for agreement: {result['fresh_rows']}.)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    model = served_model()
    fresh_bits, fresh_o = truth(model, make_credit_data(5000, seed=77)[0])
    fresh_decisions = fresh_o > 0
    weights = np.concatenate(model.program.weights)[:, 0]
    result = {
        "model": PARAMS.label(),
        "weights": int(weights.size),
        "nonzero_weights": int(np.count_nonzero(weights)),
        "fresh_rows": int(len(fresh_o)),
        "constant_agreement": round(float(max(fresh_decisions.mean(), 1 - fresh_decisions.mean())), 4),
        "attacks": [attacks(model, n, fresh_bits, fresh_decisions, seed=100 + n) for n in QUERIES],
        "repeated_queries": repeated_queries(model),
        "malicious": malicious_applicant(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "extraction.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "extraction.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
