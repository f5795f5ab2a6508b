"""The Paillier backend (ANONYMIZER_ENCRYPTION=paillier): a thermometer model's program, additive
scores or trees' path costs, computed under the applicant's Paillier public key, so that no other
party holds a secret.

Roles: the applicant makes a key pair and uploads only the public key; the co-parties fetch it by
key id (`GET /fhe/keys/{key_id}`) and encrypt their threshold bits under it, with proofs that they
are bits of a thermometer code (proofs.py); the server computes each class score from the
ciphertexts and the model's clear integer points (or each leaf's path cost from the trees' node
bits), blinds or masks it (answers.py) and only the applicant decrypts. Plaintext `/predict` is
the same integer function in the clear.
"""

import json
from pathlib import Path

import numpy as np

from ..backend import Backend, Compiled
from ..base import DECIDE, REASONS
from ..thermometer.leafpaths import LeafPaths
from ..thermometer.scoresum import ScoreSum
from . import proofs, scheme
from .answers import BlindedScores, MaskedLeaves
from .reasons import reasons_answer, reasons_outputs
from .scheme import SCHEME

SPECS_FILE = "paillier.json"

# server time of a decision on these cores (2048-bit keys, gmpy2; `make bench`): checking every
# party's proofs (bench.proofs: about 0.5 ms per branch, a branch per bit and one per column, the
# co-parties' at staging), parsing the ciphertexts, per blinded output a constant-work power and a
# ready obfuscator (made in the background), per masked leaf a power to a full-size exponent (9 ms
# on one core, two at a time), per non-zero point or path condition a product mod n^2
FIXED_SECONDS = 0.006
SECONDS_PER_OUTPUT = 0.001
SECONDS_PER_LEAF = 0.005
SECONDS_PER_WEIGHT = 0.00002
SECONDS_PER_BRANCH = 0.0005

# the answer each program gets, by the key its matrices are stored under
ANSWERS = {ScoreSum.kind: BlindedScores(), LeafPaths.kind: MaskedLeaves()}
# what one output of each answer costs the server
OUTPUT_SECONDS = {BlindedScores.name: SECONDS_PER_OUTPUT, MaskedLeaves.name: SECONDS_PER_LEAF}


def answer(model) -> BlindedScores | MaskedLeaves:
    """The answer the model's program gets (answers.py)."""
    return ANSWERS[model.program.kind]


def argument_bits(model) -> list[int]:
    """Each party's bit count, in argument order."""
    return list(model.encoding.bit_layout(model.layout).party_bits)


class PaillierBackend(Backend):
    """Thermometer programs under the applicant's Paillier key: adds and multiplies by constants,
    so no table lookup; trees run as masked path costs (`LeafPaths`)."""

    scheme = SCHEME
    lookups = False
    path_costs = True
    public_keys = True  # the uploaded key is public: co-parties may fetch it
    proves_inputs = True  # every party's part carries proofs, checked by verified_input
    hides_execution_time = True  # the time of a blinded answer is not sent (it could speak of rho)
    # exact integer sums and no lookup: scores at full precision too, beside the policy's widths
    # (accuracy stops changing at 10 bits on the bundled sets: digits 5 bits 0.907-0.926, 12 bits
    # 0.959-0.972 held out; but the coarse widths stay, their rounding regularises: on iris and
    # digits every 12-bit candidate's membership gap is above the bound, `make datasets`)
    score_widths = (12,)
    specs_file = SPECS_FILE

    # --- the developer side ------------------------------------------------------------------
    def compile(self, model, X: np.ndarray, served: bool) -> Compiled:
        """No circuit: the price of one decision (module constants, measured here)."""
        kind = answer(model)
        bits, columns = sum(argument_bits(model)), model.n_features
        branch_bytes = (2 + 1) * scheme.MIN_MODULUS_BITS // 8 + proofs.CHALLENGE_BYTES
        outputs, weights = kind.work(model.program)
        seconds = (
            FIXED_SECONDS
            + OUTPUT_SECONDS[kind.name] * outputs
            + SECONDS_PER_WEIGHT * weights
            + SECONDS_PER_BRANCH * (bits + columns)
        )
        return Compiled(
            lookups=0,
            complexity=0.0,
            input_bytes=bits * 2 * scheme.MIN_MODULUS_BITS // 8 + (bits + columns) * branch_bytes,
            key_bytes=scheme.MAX_PUBLIC_KEY_BYTES,
            # a two-class scorecard served also gives reasons (reasons.py; the service may turn them off)
            functions={DECIDE: None, REASONS: REASONS} if served and model.gives_reasons else {DECIDE: None},
            estimated_seconds=seconds,
        )

    def labels(self, model, X: np.ndarray, real: bool) -> np.ndarray:
        """Simulated: the clear labels (Paillier is exact). Real: a fresh key pair, each party's
        bits encrypted, the server's computation, the applicant's decryption."""
        if not real:
            return model.predict(X)
        from phe import generate_paillier_keypair

        public_key, private_key = generate_paillier_keypair(n_length=scheme.MIN_MODULUS_BITS)
        served, decoding = answer(model), self.describe(model)["decoding"]
        key, labels = self.parse_keys(model, scheme.public_key_bytes(public_key)), []
        for row in range(X.shape[0]):
            parts = [
                scheme.pack(public_key, scheme.encrypt_bits(public_key, z[0], private_key))
                for z in model.party_bits(X[row : row + 1])
            ]
            result = self.run(model, parts, key, "decide")
            values = scheme.decrypt_signed(
                private_key, scheme.unpack(public_key, result, served.served(model.program), "result")
            )
            labels.append(int(np.argmax(served.shares(values, decoding))))
        return model.classes[np.asarray(labels)]

    def write(self, model, deployment: Path) -> None:
        (deployment / SPECS_FILE).write_text(json.dumps(self.specs(model)))

    def describe(self, model) -> dict:
        """The scheme, what a party needs to speak it, and how to read its answer (answers.py)."""
        return {
            "scheme": SCHEME,
            "paillier": self.specs(model),
            "decoding": answer(model).decoding(model.program),
        }

    def specs(self, model) -> dict:
        """What `GET /fhe/specs` serves: the key and ciphertext format, each party's bit count."""
        names = model.layout.names
        return {
            "scheme": SCHEME,
            "min_modulus_bits": scheme.MIN_MODULUS_BITS,
            "public_key": 'JSON {"scheme": "paillier", "n": "<hex>"}',
            "ciphertext": "per party: one Paillier ciphertext per threshold bit, each big-endian in the byte "
            "width of n^2, then per column the proof that they hold a thermometer code (proofs.py)",
            "column_bits": {name: model.column_sizes(name) for name in names},
            "argument_bits": dict(zip(names, argument_bits(model))),
            "result": answer(model).result_text,
        }

    # --- the server side ---------------------------------------------------------------------
    def max_key_bytes(self, model) -> int:
        return scheme.MAX_PUBLIC_KEY_BYTES

    def parse_keys(self, model, serialized: bytes):
        """The applicant's public key (scheme.parse_public_key; BadKey is a ValueError), with
        its obfuscators made ahead of answers."""
        outputs = answer(model).served(model.program)
        if REASONS in model.functions:
            outputs = max(outputs, reasons_outputs(model.program))
        kept = max(scheme.ServerKey.KEPT, 2 * outputs)
        return scheme.ServerKey(scheme.parse_public_key(serialized), kept)

    def checked_keys(self, model, serialized: bytes):
        return self.parse_keys(model, serialized)  # parse_public_key checks all a public key has

    def warm(self, model, keys) -> None:
        keys.refill()  # the first answers' fresh randomness, made before they are asked

    def verified_input(self, model, serialized_key: bytes, key_id: str, party: str, data: bytes) -> bytes:
        """A party's packed ciphertexts, once their proofs hold (proofs.py); ValueError naming the
        party (and column) otherwise. What is kept or computed on is the ciphertexts alone."""
        public_key = scheme.parse_public_key(serialized_key)
        sizes = model.column_sizes(party)
        count, n = sum(sizes), public_key.n
        ciphertext_bytes = count * scheme.width(public_key)
        expected = ciphertext_bytes + proofs.proof_bytes(sizes, n)
        if len(data) != expected:
            raise ValueError(
                f"The part of {party!r} has {len(data)} bytes; {count} ciphertexts and the proofs of "
                f"its {len(sizes)} columns take {expected} bytes."
            )
        packed = data[:ciphertext_bytes]
        ciphertexts = scheme.unpack(public_key, packed, count, party)
        column_proofs = proofs.unpack_proofs(data[ciphertext_bytes:], sizes, n, party)
        context = proofs.ProofContext(key_id, model.keys_digest, party)
        proofs.verify(n, ciphertexts, packed, column_proofs, sizes, context)
        return packed

    def run(self, model, ciphertexts: list[bytes], keys, function: str) -> bytes:
        """The blinded or masked answer (or the reasons answer) from one packed ciphertext per
        party (argument order)."""
        bits = [
            scheme.unpack(keys, data, size, name)
            for name, data, size in zip(model.layout.names, ciphertexts, argument_bits(model))
        ]
        if function == REASONS:
            return scheme.pack(keys, reasons_answer(keys, bits, model.program))
        return scheme.pack(keys, answer(model).compute(keys, bits, model.program))
