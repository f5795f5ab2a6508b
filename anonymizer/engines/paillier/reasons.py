"""Reason codes under Paillier (`reasons`, two-class additive models, off unless asked as under
TFHE): from the very ciphertexts of a decision, per column with any points

    lost_c = best_c - points_c(level_c)      and      sign(d + lost_c)

where d = score + shift decides (approve iff d > 0). The answer is the blinded decision, each
lost_c as a fresh encryption (re-randomised, so its randomness owes nothing to the parties'), and
each d + lost_c blinded to its sign: whether that column alone at its best bin would approve.
The applicant learns what TFHE's reasons show but the score: the points lost per column and
which columns would flip the decision alone, not the margin (answers.read_reasons).
"""

import numpy as np

from ..thermometer.reasons import reason_columns
from . import scheme
from .answers import BlindedScores


def reasons_outputs(program) -> int:
    """Ciphertexts in one reasons answer: the decision, then two per reason column."""
    return 1 + 2 * len(reason_columns(program))


def reasons_answer(key, bits: list[list], program) -> list[int]:
    """[blinded d, Enc(lost_c) for each column, blinded d + lost_c for each column]."""
    nsquare = key.nsquare
    decision = scheme.encrypted_scores(key, bits, program.weights, BlindedScores.constants(program).tolist())[
        0
    ]
    lost = []
    for column in reason_columns(program):
        weights = [np.zeros_like(m[:, :1]) for m in program.weights]
        weights[column.party][column.start : column.stop, 0] = -program.weights[column.party][
            column.start : column.stop, 0
        ]
        lost.append(scheme.encrypted_scores(key, bits, weights, [column.best - column.base])[0])
    fresh = [int(c * key.obfuscator() % nsquare) for c in lost]
    flips = [scheme.blinded(key, [decision * c % nsquare], True)[0] for c in lost]
    return scheme.blinded(key, [decision], True) + fresh + flips
