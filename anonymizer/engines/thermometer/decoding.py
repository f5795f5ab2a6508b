"""What a party applies to a decrypted output: each class's share of the votes, or probabilities.

Every thermometer circuit's decoding (its `decoding` dict, served in `/fhe/info`) is the keyword
arguments of `decode_shares`. The largest share is the label (the first class on ties).
"""

import numpy as np


def decode_shares(
    outputs,
    n_classes: int,
    n_trees: int = 1,
    score_shift: int | None = None,
    score_scale: float | None = None,
    score_outputs: int | None = None,
) -> np.ndarray:
    """(rows, classes) shares from circuit outputs: trees' votes (no scale), a two-class score
    (log-odds = (output + score_shift) / score_scale), or one score per class (softmax)."""
    if score_scale is None:
        return decode_votes(outputs, n_trees, n_classes) / n_trees
    if score_outputs is not None and score_outputs > 1:
        scores = np.asarray(outputs, dtype=np.float64).reshape(-1, score_outputs) / score_scale
        exps = np.exp(scores - scores.max(axis=1, keepdims=True))
        return exps / exps.sum(axis=1, keepdims=True)
    log_odds = (np.asarray(outputs, dtype=np.int64).reshape(-1) + score_shift) / score_scale
    second = 1.0 / (1.0 + np.exp(-log_odds))
    return np.column_stack([1.0 - second, second])


class TreeDecoding:
    """What the tree programs (`LeafSum`, `LeafPaths`) share: their output is votes, or a boosted
    score, decoded alike. Needs `n_trees`, `n_classes`, `score_shift` and `score_scale`."""

    gives_reasons = False  # votes and leaf scores are not points per column

    @property
    def decoding(self) -> dict:
        """What a party needs to turn a decrypted output into class shares (`decode_shares`)."""
        decoding = {"n_trees": self.n_trees, "n_classes": self.n_classes}
        if self.score_scale is not None:
            decoding.update(score_shift=self.score_shift, score_scale=self.score_scale)
        return decoding

    def shares(self, outputs: np.ndarray) -> np.ndarray:
        """(rows, classes) shares of the votes, or probabilities, decoded from outputs."""
        return decode_shares(outputs, **self.decoding)


def decode_votes(outputs, n_trees: int, n_classes: int) -> np.ndarray:
    """(rows, classes) votes from circuit outputs; what parties apply after decrypting."""
    outputs = np.asarray(outputs, dtype=np.int64).reshape(-1)
    if n_classes == 2:
        return np.column_stack([n_trees - outputs, outputs])
    if n_trees == 1:
        return np.eye(n_classes, dtype=np.int64)[outputs]
    base = n_trees + 1
    rest = np.column_stack([(outputs // base**c) % base for c in range(n_classes - 1)])
    return np.column_stack([n_trees - rest.sum(axis=1), rest])


# how a TFHE `reasons` answer packs several columns' points lost into one output (reasons.py);
# here, beside the other decoding, because the party SDK reads it without the server's libraries
def place_values(group: list[int], radices: list[int]) -> list[int]:
    """Each entry's weight in its group's packed value (mixed radix, the first most significant)."""
    weights, weight = [], 1
    for entry in reversed(group):
        weights.append(weight)
        weight *= radices[entry]
    return weights[::-1]


def unpack_reasons(output: np.ndarray, groups: list[list[int]], radices: list[int]) -> list[int]:
    """The points lost per entry, from one decrypted `reasons` output [decision, packed...]."""
    lost = [0] * len(radices)
    for value, group in zip(output[1:], groups):
        value = int(value)
        for entry, weight in zip(group, place_values(group, radices)):
            lost[entry], value = divmod(value, weight)
    return lost
