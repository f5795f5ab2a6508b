"""The Paillier engine (ANONYMIZER_ENCRYPTION=paillier): the thermometer engine's additive models
computed under the applicant's Paillier public key, so that no other party holds a secret.

Roles: the applicant makes a key pair and uploads only the public key; the co-parties fetch it by
key id (`GET /fhe/keys/{key_id}`) and encrypt their threshold bits under it; the server computes
each class score from the ciphertexts and the model's clear integer points, blinds and
re-randomises it (scheme.py), and only the applicant decrypts. Plaintext `/predict` is the same
integer function in the clear. Everything but the circuit is the thermometer model's.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...state.vault import Vault
from ..base import DECIDE
from ..params import ModelSpec
from ..thermometer.model import ThermometerModel
from ..thermometer.scoresum import ScoreSum
from . import proofs, scheme
from .scheme import SCHEME

SPECS_FILE = "paillier.json"

# server time of a decision on these cores (2048-bit keys, gmpy2; `make bench`): checking every
# party's proofs (bench.proofs: about 0.5 ms per branch, a branch per bit and one per column, the
# co-parties' at staging), parsing the ciphertexts, per blinded output a constant-work power and a
# ready obfuscator (made in the background), per non-zero point a product mod n^2
FIXED_SECONDS = 0.006
SECONDS_PER_OUTPUT = 0.001
SECONDS_PER_WEIGHT = 0.00002
SECONDS_PER_BRANCH = 0.0005


@dataclass
class PaillierProgram:
    """What the engine contract reads of a compiled circuit, for a computation with no circuit:
    no lookups, and a party's input is one ciphertext (of n^2) per bit."""

    program: ScoreSum
    argument_bits: list[int]
    programmable_bootstrap_count: int = 0
    complexity: float = 0.0

    @property
    def size_of_inputs(self) -> int:
        bits, columns = sum(self.argument_bits), len(self.program.column_sizes)
        branch_bytes = (2 + 1) * scheme.MIN_MODULUS_BITS // 8 + proofs.CHALLENGE_BYTES
        return bits * 2 * scheme.MIN_MODULUS_BITS // 8 + (bits + columns) * branch_bytes

    @property
    def estimated_seconds(self) -> float:
        """Server time of one decision (module constants, measured here)."""
        weights = sum(int(np.count_nonzero(m)) for m in self.program.weights)
        branches = sum(self.argument_bits) + len(self.program.column_sizes)
        outputs = scheme.blinded_outputs(self.program.n_classes)
        return (
            FIXED_SECONDS
            + SECONDS_PER_OUTPUT * outputs
            + SECONDS_PER_WEIGHT * weights
            + SECONDS_PER_BRANCH * branches
        )


class PaillierModel(ThermometerModel):
    """A two-class or K-class additive model served under Paillier."""

    engine = "paillier"
    scheme = SCHEME
    ensembles = False
    trees = False  # Paillier adds and multiplies by constants: no table lookup, so no trees
    additive = True
    specs_file = SPECS_FILE
    public_keys = True  # the uploaded key is public: co-parties may fetch it
    proves_inputs = True  # every party's part carries proofs, checked by verified_input
    hides_execution_time = True  # the time of a blinded answer is not sent (it could speak of rho)

    @classmethod
    def build(cls, X: np.ndarray, y: np.ndarray, layout, params: ModelSpec) -> "PaillierModel":
        if not (params.additive or params.majority):
            raise ValueError("ANONYMIZER_ENCRYPTION=paillier serves additive models only (TREE_ADDITIVE=1).")
        model = super().build(X, y, layout, params)
        if params.majority:  # the constant as an additive model: every point 0
            sizes = [sum(model.encoding.n_bits(c) for c in cols) for cols in layout.columns.values()]
            majority = int(np.argmax(np.unique(y, return_counts=True)[1]))
            model.program = constant_score_sum(sizes, model.encoding, layout, len(model.classes), majority)
        return model

    @staticmethod
    def estimated_seconds(circuit) -> float:
        return circuit.estimated_seconds

    def compile(self, X: np.ndarray) -> PaillierProgram:
        if not isinstance(self.program, ScoreSum):
            raise ValueError("Only an additive model has a Paillier computation.")
        return PaillierProgram(self.program, [m.shape[0] for m in self.program.weights])

    def compile_served(self, X: np.ndarray) -> PaillierProgram:
        return self.compile(X)

    @property
    def constants(self) -> np.ndarray:
        """Each output's clear constant: the points at level 0, plus the decision shift (two
        classes) or each class's lift (K classes), so the decision is o > 0 or the largest o."""
        program = self.program
        if program.n_classes == 2:
            return program.offset + program.score_shift
        return program.offset + program.tables[:, 0]

    # --- the server side ---------------------------------------------------------------------
    def parse_keys(self, serialized: bytes):
        """The applicant's public key (scheme.parse_public_key; BadKey is a ValueError), with
        its obfuscators made ahead of answers."""
        return scheme.ServerKey(scheme.parse_public_key(serialized))

    def column_sizes(self, party: str) -> list[int]:
        """Bits of each of `party`'s columns, in its argument order."""
        return [self.encoding.n_bits(column) for column in self.layout.columns[party]]

    def verified_input(self, serialized_key: bytes, key_id: str, party: str, data: bytes) -> bytes:
        """A party's packed ciphertexts, once their proofs hold (proofs.py); ValueError naming the
        party (and column) otherwise. What is kept or computed on is the ciphertexts alone."""
        public_key = scheme.parse_public_key(serialized_key)
        sizes = self.column_sizes(party)
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
        context = proofs.ProofContext(key_id, self.keys_digest, party)
        proofs.verify(n, ciphertexts, packed, column_proofs, sizes, context)
        return packed

    def prepare(self):
        return None  # nothing to load: the computation is the clear points

    def warm_up_inputs(self) -> list[bytes]:
        return []

    def key_bytes_bound(self) -> int:
        return scheme.MAX_PUBLIC_KEY_BYTES

    @property
    def max_key_bytes(self) -> int:
        return scheme.MAX_PUBLIC_KEY_BYTES

    def checked_keys(self, serialized: bytes):
        return self.parse_keys(serialized)  # parse_public_key checks all a public key has

    def warm(self, keys) -> None:
        keys.refill()  # the first answers' fresh randomness, made before they are asked

    def run_encrypted(self, ciphertexts: list[bytes], keys, function: str = DECIDE) -> bytes:
        """The blinded encrypted decision from one packed ciphertext per party (argument order)."""
        if function != DECIDE:
            raise ValueError(f"The served model does not compute {function!r}; it offers ['decide'].")
        sizes = [m.shape[0] for m in self.program.weights]
        bits = [
            scheme.unpack(keys, data, size, name)
            for name, data, size in zip(self.layout.names, ciphertexts, sizes)
        ]
        scores = scheme.encrypted_scores(keys, bits, self.program.weights, self.constants.tolist())
        return scheme.pack(keys, scheme.blinded(keys, scores, self.program.n_classes == 2))

    # --- the developer side ------------------------------------------------------------------
    def simulate(self, X: np.ndarray) -> np.ndarray:
        return self.predict(X)  # no noise to simulate: Paillier is exact

    def execute(self, X: np.ndarray) -> np.ndarray:
        """Labels by real Paillier: a fresh key pair, each party's bits encrypted, the server's
        computation, the applicant's decryption."""
        from phe import generate_paillier_keypair

        public_key, private_key = generate_paillier_keypair(n_length=scheme.MIN_MODULUS_BITS)
        labels = []
        for row in range(X.shape[0]):
            parts = [
                scheme.pack(public_key, scheme.encrypt_bits(public_key, z[0], private_key))
                for z in self.party_bits(X[row : row + 1])
            ]
            result = self.run_encrypted(parts, scheme.ServerKey(public_key))
            values = scheme.decrypt_signed(
                private_key, scheme.unpack(public_key, result, self.n_outputs, "result")
            )
            labels.append(scheme.blinded_labels(values, self.program.n_classes)[0])
        return self.classes[np.asarray(labels)]

    @property
    def n_outputs(self) -> int:
        """Values in one blinded answer (scheme.blinded_outputs)."""
        return scheme.blinded_outputs(self.program.n_classes)

    def public_description(self) -> dict:
        """The thermometer description, with the scheme and what a party needs to speak it."""
        description = {
            **super().public_description(),
            "scheme": scheme.SCHEME,
            "functions": {DECIDE: None},
            "paillier": self.specs(),
        }
        description["decoding"] = {
            "n_classes": self.program.n_classes,
            "blinded": True,
            "outputs": self.n_outputs,
        }
        return description

    def specs(self) -> dict:
        """What `GET /fhe/specs` serves: the key and ciphertext format, each party's bit count."""
        return {
            "scheme": scheme.SCHEME,
            "min_modulus_bits": scheme.MIN_MODULUS_BITS,
            "public_key": 'JSON {"scheme": "paillier", "n": "<hex>"}',
            "ciphertext": "per party: one Paillier ciphertext per threshold bit, each big-endian in the byte "
            "width of n^2, then per column the proof that they hold a thermometer code (proofs.py)",
            "column_bits": {name: self.column_sizes(name) for name in self.layout.names},
            "argument_bits": dict(zip(self.layout.names, [m.shape[0] for m in self.program.weights])),
            "result": "one ciphertext per output: two classes, rho * (score + shift) + e (decide the second "
            "class iff > 0); K classes, per pair k < l rho_kl * (score_k - score_l + 1) + e_kl (k wins "
            "iff > 0; the label wins every pair)",
        }

    def write_deployment(self, deployment: Path, vault: Vault) -> dict:
        deployment.mkdir()
        (deployment / SPECS_FILE).write_text(json.dumps(self.specs()))
        return self.metadata_fields()

    @classmethod
    def from_stored(cls, directory: Path, meta: dict, vault: Vault) -> "PaillierModel":
        model = super().from_stored(directory, meta, vault)
        model.circuit = model.compile(np.zeros((0, model.n_features)))
        return model


def constant_score_sum(party_bits: list[int], encoding, layout, n_classes: int, label: int) -> ScoreSum:
    """An additive model that always decides class index `label` (selection's last resort)."""
    order = [c for columns in layout.columns.values() for c in columns]
    if n_classes == 2:
        tables, shift = np.zeros((1, 2), dtype=np.int64), 1 if label == 1 else 0
    else:
        tables, shift = np.zeros((n_classes, 2), dtype=np.int64), None
        tables[label] = 1
    return ScoreSum(
        weights=[np.zeros((bits, len(tables)), dtype=np.int64) for bits in party_bits],
        offset=np.zeros(len(tables), dtype=np.int64),
        tables=tables,
        column_sizes=[encoding.n_bits(c) for c in order],
        n_classes=n_classes,
        score_scale=1.0,
        score_shift=shift,
    )
