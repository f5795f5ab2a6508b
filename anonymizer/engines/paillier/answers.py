"""What the server answers under Paillier for each thermometer program, and how the applicant
reads it: the one place that says what one answer reveals (docs/privacy.md quotes it).

- `BlindedScores` (additive models, `ScoreSum`): each class score blinded to its sign
  (scheme.blinded). The applicant learns the decision and nothing more.
- `MaskedLeaves` (trees and ensembles, `LeafPaths`): per leaf L a fresh encryption of
  r_L * x_L + v_L + m_t, in shuffled order, where x_L is the leaf's path cost (0 iff reached,
  in [-depth, -1] otherwise), r_L uniform in [1, n) and fresh, v_L the leaf's value and m_t its
  tree's mask. An unreached leaf's value is uniform mod n (r_L * x_L is, x_L being invertible),
  so it says nothing, not even how many of its conditions failed. A single tree has no mask:
  the applicant recognises the one small value, its leaf's vote (the decision), and the leaves
  of the most common vote are left out (none recognised: that vote). An ensemble of T trees
  has masks uniform in [0, 2^mask_bits) for the first T - 1 trees and minus their sum for the
  last, so the T recognised values sum to the ensemble's output (its votes or boosted score,
  what TFHE's applicant decrypts too) and are each within 2^-STATISTICAL_BITS of a uniform
  draw: no single tree's vote or leaf survives.

Imported by the server and by the party codec (no server dependency).
"""

import secrets

import gmpy2
import numpy as np

from ..thermometer.decoding import decode_shares
from . import scheme
from .proofs import threaded

STATISTICAL_BITS = 80  # an ensemble's per-tree values are within 2^-80 of uniform draws
_shuffle = secrets.SystemRandom().shuffle


def parallel_powers(bases: list, exponents: list, modulus) -> list:
    """bases[i]^exponents[i] mod modulus, on two threads (gmpy2 told to release the GIL)."""

    def work(pairs: list) -> list:
        with gmpy2.context(allow_release_gil=True):
            return [gmpy2.powmod(base, exponent, modulus) for base, exponent in pairs]

    return threaded(list(zip(bases, exponents)), work)


class BlindedScores:
    """Additive programs: class scores blinded to their signs (scheme.py's module docstring)."""

    name = "blinded_scores"

    def served(self, program) -> int:
        """Ciphertexts in one answer."""
        return scheme.blinded_outputs(program.n_classes)

    def work(self, program) -> tuple[int, int]:
        """(blinded outputs, non-zero weights): what one answer costs."""
        return self.served(program), sum(int(np.count_nonzero(m)) for m in program.weights)

    @staticmethod
    def constants(program) -> np.ndarray:
        """Each output's clear constant: the points at level 0, plus the decision shift (two
        classes) or each class's lift (K classes), so the decision is o > 0 or the largest o."""
        if program.n_classes == 2:
            return program.offset + program.score_shift
        return program.offset + program.tables[:, 0]

    def compute(self, key, bits: list[list], program) -> list[int]:
        """The blinded answer from each party's bit ciphertexts."""
        scores = scheme.encrypted_scores(key, bits, program.weights, self.constants(program).tolist())
        return scheme.blinded(key, scores, program.n_classes == 2)

    def decoding(self, program) -> dict:
        n_classes = program.n_classes
        scale = {"score_scale": program.score_scale} if n_classes == 2 else {}  # reasons' log-odds
        return {
            "answer": self.name,
            "n_classes": n_classes,
            "blinded": True,
            "outputs": scheme.blinded_outputs(n_classes),
            **scale,
        }

    result_text = (
        "one ciphertext per output: two classes, rho * (score + shift) + e (decide the second class iff "
        "> 0); K classes, per pair k < l rho_kl * (score_k - score_l + 1) + e_kl (k wins iff > 0; the "
        "label wins every pair)"
    )

    @staticmethod
    def shares(values: list[int], decoding: dict) -> np.ndarray:
        """One-hot shares of the decided class: the answer carries the decision only."""
        n_classes = decoding["n_classes"]
        return np.eye(n_classes)[scheme.blinded_labels(values, n_classes)[0]]


class MaskedLeaves:
    """Trees and ensembles: masked path costs, one per served leaf (the module docstring)."""

    name = "masked_leaves"

    @staticmethod
    def plan(program) -> tuple[np.ndarray, int]:
        """(the leaves an answer carries, the output when none is recognised): a single tree
        leaves out the leaves of its most common value; an ensemble needs every leaf's mask."""
        if program.n_trees > 1:
            return np.arange(program.n_leaves), 0
        values, counts = np.unique(program.values, return_counts=True)
        default = int(values[np.argmax(counts)])
        return np.flatnonzero(program.values != default), default

    def served(self, program) -> int:
        return len(self.plan(program)[0])

    def work(self, program) -> tuple[int, int]:
        """(masked leaves, path conditions): what one answer costs."""
        leaves = self.plan(program)[0]
        return len(leaves), sum(int(np.count_nonzero(form[:, leaves])) for form in program.forms)

    @staticmethod
    def mask_bits(program) -> int:
        """Width of the masks: the largest leaf value's plus STATISTICAL_BITS (0: no mask)."""
        if program.n_trees == 1:
            return 0
        return int(np.max(np.abs(program.values))).bit_length() + STATISTICAL_BITS

    def bound_bits(self, program) -> int:
        """Recognised values lie in (-2^bound_bits, 2^bound_bits); an unreached leaf's value,
        uniform mod n, lands there with probability about 2^(bound_bits + 1 - log2 n)."""
        largest = int(np.max(np.abs(program.values))).bit_length()
        return max(largest, self.mask_bits(program)) + program.n_trees.bit_length() + 1

    def tree_masks(self, program) -> list[int]:
        """One mask per tree, summing to zero: uniform draws for all trees but the last."""
        if program.n_trees == 1:
            return [0]
        masks = [secrets.randbits(self.mask_bits(program)) for _ in range(program.n_trees - 1)]
        return masks + [-sum(masks)]

    def compute(self, key, bits: list[list], program) -> list[int]:
        """Fresh encryptions of r_L * x_L + v_L + m_t for the served leaves, shuffled."""
        n, nsquare = key.n, gmpy2.mpz(key.nsquare)
        ciphertexts = [c for party in bits for c in party]
        inverses: dict[int, object] = {}
        forms = np.concatenate(program.forms)
        masks = self.tree_masks(program)
        leaves = self.plan(program)[0].tolist()
        costs, shown = [], []
        for leaf in leaves:
            cost = gmpy2.mpz(1 + int(program.constants[leaf]) % n * n)  # g^c_L, g = n + 1
            for bit in np.flatnonzero(forms[:, leaf]).tolist():
                if forms[bit, leaf] < 0 and bit not in inverses:
                    inverses[bit] = gmpy2.invert(ciphertexts[bit], nsquare)
                cost = cost * (ciphertexts[bit] if forms[bit, leaf] > 0 else inverses[bit]) % nsquare
            costs.append(cost)
            # g^(value + mask) times a fresh r^n: the answer's randomness owes nothing to the inputs'
            value = int(program.values[leaf]) + masks[int(program.trees[leaf])]
            shown.append((1 + value % n * n) * key.obfuscator() % nsquare)
        factors = [secrets.randbelow(n - 1) + 1 for _ in leaves]  # r_L, fresh and uniform
        masked = parallel_powers(costs, factors, nsquare)
        answer = [int(power * fresh % nsquare) for power, fresh in zip(masked, shown)]
        _shuffle(answer)
        return answer

    def decoding(self, program) -> dict:
        leaves, default = self.plan(program)
        return {
            "answer": self.name,
            **program.decoding,
            # a single tree's answer is its vote: the decision, no share of anything
            "blinded": program.n_trees == 1 and program.score_scale is None,
            "outputs": len(leaves),
            "bound_bits": self.bound_bits(program),
            "default": default,
        }

    result_text = (
        "one ciphertext per served leaf, shuffled: r * (path cost) + value + tree mask, r fresh and "
        "uniform mod n; the applicant keeps the values in (-2^bound_bits, 2^bound_bits) (one per tree "
        "for an ensemble, at most one for a single tree, else `default`) and sums them"
    )

    @staticmethod
    def output(values: list[int], decoding: dict) -> int:
        """The served function's output from the decrypted (signed) values; ValueError for an
        answer no honest server sends."""
        bound = 1 << int(decoding["bound_bits"])
        kept = [v for v in values if -bound < v < bound]
        trees = int(decoding["n_trees"])
        if trees == 1 and len(kept) <= 1:
            return int(kept[0]) if kept else int(decoding["default"])
        if trees > 1 and len(kept) == trees:
            return int(sum(kept))
        raise ValueError(f"The answer holds {len(kept)} readable leaf values for {trees} trees.")

    @classmethod
    def shares(cls, values: list[int], decoding: dict) -> np.ndarray:
        """Each class's share of the votes, or probabilities, as TFHE's applicant decodes them."""
        keys = ("n_classes", "n_trees", "score_shift", "score_scale")
        return decode_shares(
            [cls.output(values, decoding)], **{k: decoding[k] for k in keys if k in decoding}
        )[0]


def read_reasons(values: list[int], columns: int) -> tuple[int, list[int], list[bool]]:
    """(decided class index, points lost per reason column, whether each column alone at its best
    bin would approve) from a decrypted reasons answer (paillier/reasons.py); ValueError for an
    answer no honest server sends."""
    if len(values) != 1 + 2 * columns:
        raise ValueError(f"A reasons answer holds {1 + 2 * columns} values, not {len(values)}.")
    lost = [int(v) for v in values[1 : 1 + columns]]
    if any(not 0 <= points < 1 << 32 for points in lost):
        raise ValueError("A reasons answer holds points lost outside any score's range.")
    approved = values[0] > 0
    return int(approved), lost, [not approved and v > 0 for v in values[1 + columns :]]


# how the applicant reads an answer, by the `answer` its decoding names
READERS = {reader.name: reader for reader in (BlindedScores, MaskedLeaves)}


def answer_shares(values: list[int], decoding: dict) -> np.ndarray:
    """(classes,) shares from one decrypted answer (a decoding without `answer` is blinded)."""
    return READERS[decoding.get("answer", BlindedScores.name)].shares(values, decoding)
