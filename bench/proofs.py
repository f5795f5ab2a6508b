"""`make bench` (part): what the Paillier bit proofs cost, on the stub's layout and default
additive model: the applicant's encryption with proofs (with its private key: CRT), a co-party's
(no private key), the server's batched check of each part, one blinded answer for 2, 3 and 10
classes, and one masked-leaf answer of the tree families (a depth-5 tree, a forest, boosted
trees). The first call of each is reported beside the median of the next REPEATS.

Writes bench/results/proofs.json and proofs.md (docs/performance.md includes the table).
"""

import json
import statistics
import time
from pathlib import Path

import numpy as np
from phe import generate_paillier_keypair

from anonymizer.engines.paillier import proofs, scheme
from anonymizer.engines.paillier.answers import MaskedLeaves
from anonymizer.engines.paillier.model import PaillierModel
from anonymizer.parties import PartyLayout
from anonymizer.settings import ModelSpec
from challenge_stub.dataset import PARTY_LAYOUT, make_credit_data

RESULTS = Path(__file__).resolve().parent / "results"
REPEATS = 5
PARAMS = ModelSpec(n_bits=4, additive=True, regularization=0.003, score_bits=5)
TREE_FAMILIES = {
    "depth-5 tree": ModelSpec(max_depth=5, n_bits=4),
    "forest, 4 trees of depth 4": ModelSpec(max_depth=4, n_estimators=4, n_bits=4),
    "boosted, 6 trees of depth 3": ModelSpec(max_depth=3, n_estimators=6, boosted=True, n_bits=4),
}


def timed(work) -> tuple[float, float]:
    """(first call, median of the next REPEATS) in seconds."""
    times = []
    for _ in range(REPEATS + 1):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return times[0], statistics.median(times[1:])


def main() -> None:
    X, y = make_credit_data(6000, seed=0)
    model = PaillierModel.train(X, y, PartyLayout(PARTY_LAYOUT), PARAMS)
    model._keys_digest = "bench"  # an unsaved model has no specs to digest
    (public_key, private_key), keygen = timed_keygen()
    key_bytes = scheme.public_key_bytes(public_key)
    row = make_credit_data(1, seed=3)[0]
    rows = []
    for party, bits in zip(model.layout.names, model.party_bits(row)):
        sizes = model.column_sizes(party)
        context = proofs.ProofContext("bench", model.keys_digest, party)
        applicant = party == model.layout.names[0]
        private = (private_key.p, private_key.q) if applicant else None
        made = {}

        def prove(bits=bits[0], sizes=sizes, context=context, private=private, made=made):
            ciphertexts, column_proofs = proofs.encrypt_and_prove(public_key.n, bits, sizes, context, private)
            made["part"] = scheme.pack(public_key, ciphertexts) + proofs.pack_proofs(
                column_proofs, public_key.n
            )

        prove_first, prove_median = timed(prove)
        verify_first, verify_median = timed(
            lambda party=party, made=made: model.verified_input(key_bytes, "bench", party, made["part"])
        )
        rows.append(
            {
                "party": party,
                "bits": int(sum(sizes)),
                "columns": len(sizes),
                "holds_private_key": applicant,
                "part_bytes": len(made["part"]),
                "prove_first_s": round(prove_first, 3),
                "prove_median_s": round(prove_median, 3),
                "verify_first_s": round(verify_first, 4),
                "verify_median_s": round(verify_median, 4),
            }
        )
    result = {
        "keygen_s": round(keygen, 3),
        "parties": rows,
        "blinding": blinding_times(public_key),
        "masked_leaves": masked_leaf_times(X, y, public_key, private_key),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "proofs.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "proofs.md").write_text(markdown(result))
    print(markdown(result))


def timed_keygen():
    started = time.perf_counter()
    pair = generate_paillier_keypair(n_length=scheme.MIN_MODULUS_BITS)
    return pair, time.perf_counter() - started


def blinding_times(public_key) -> list[dict]:
    """One blinded answer's server time for K classes (the obfuscators made beforehand, as the
    server keeps them ready)."""
    out = []
    for n_classes in (2, 3, 10):
        scores = [public_key.raw_encrypt(int(v)) for v in np.arange(1 if n_classes == 2 else n_classes)]
        key = scheme.ServerKey(public_key)
        outputs = scheme.blinded_outputs(n_classes)
        key._ready.extend(key._fresh() for _ in range(outputs * (REPEATS + 1)))
        first, median = timed(lambda key=key, scores=scores, n=n_classes: scheme.blinded(key, scores, n == 2))
        out.append(
            {
                "classes": n_classes,
                "outputs": outputs,
                "first_s": round(first, 4),
                "median_s": round(median, 4),
            }
        )
    return out


def masked_leaf_times(X, y, public_key, private_key) -> list[dict]:
    """One masked-leaf answer's server time for each tree family (obfuscators made beforehand)."""
    out = []
    for name, params in TREE_FAMILIES.items():
        model = PaillierModel.train(X, y, PartyLayout(PARTY_LAYOUT), params)
        bits = [scheme.encrypt_bits(public_key, z[0], private_key) for z in model.party_bits(X[:1])]
        served = MaskedLeaves().served(model.program)
        key = scheme.ServerKey(public_key, kept=0)  # no refill competing with the timed answers
        key._ready.extend(key._fresh() for _ in range(served * (REPEATS + 1)))
        first, median = timed(
            lambda key=key, bits=bits, program=model.program: MaskedLeaves().compute(key, bits, program)
        )
        out.append(
            {
                "model": name,
                "leaves": int(model.info["tree_leaves"]),
                "values": served,
                "first_s": round(first, 4),
                "median_s": round(median, 4),
                "estimated_s": round(model.compiled.estimated_seconds, 4),
            }
        )
    return out


def markdown(result: dict) -> str:
    lines = [
        "| party | bits | columns | private key | part (bytes) | encrypt + prove: first / median (s) | server check: first / median (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["parties"]:
        lines.append(
            f"| {r['party']} | {r['bits']} | {r['columns']} | {'yes' if r['holds_private_key'] else 'no'} | "
            f"{r['part_bytes']:,} | {r['prove_first_s']:.3f} / {r['prove_median_s']:.3f} | "
            f"{r['verify_first_s']:.4f} / {r['verify_median_s']:.4f} |"
        )
    blinding = ", ".join(
        f"{b['classes']} classes ({b['outputs']} values) {b['median_s'] * 1000:.1f} ms"
        for b in result["blinding"]
    )
    lines += [
        "",
        f"Key pair (2048-bit modulus): {result['keygen_s']:.2f} s. One blinded answer, median: {blinding} "
        "(each value a constant-work power; the fresh obfuscators are made ahead, in the background).",
        "",
        "| tree model under Paillier | leaves | values in the answer | masked answer: first / median (s) "
        "| selection's estimate of the decision, proofs included (s) |",
        "|---|---|---|---|---|",
        *(
            f"| {m['model']} | {m['leaves']} | {m['values']} | {m['first_s']:.4f} / {m['median_s']:.4f} "
            f"| {m['estimated_s']:.3f} |"
            for m in result["masked_leaves"]
        ),
        "",
        "(`make bench`, bench/proofs.py: the stub's layout, the default additive model's encoding, "
        f"{REPEATS} calls after the first.)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
