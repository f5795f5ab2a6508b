"""Threshold (thermometer) encoding: a party turns each of its values x into the bits [x > edge].

Every column has its own ascending list of edges, fitted on the training data: the midpoints
between its distinct values when there are at most 2**n_bits of them, else its quantiles. A
column's *level* is the number of its edges below x (the count of its set bits). Models are
trained on levels, so every node test of a tree is one of these bits: the server never compares
anything, and no party learns which edges the model uses.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BitLayout:
    """Where the parties' threshold bits sit in the program's input: X's columns in argument order
    (party after party), each one's bit count, and each party's bit count and first bit."""

    columns: tuple[int, ...]  # X's columns in argument order
    column_bits: tuple[int, ...]  # bits of each of those columns
    party_bits: tuple[int, ...]  # bits of each party, in argument order

    @property
    def party_starts(self) -> np.ndarray:
        """Each party's first bit in the stacked input, then the total (len = parties + 1)."""
        return np.cumsum([0, *self.party_bits])


class ThresholdEncoding:
    """Per-column edges; `bits` is what a party encrypts, `levels` what models are trained on."""

    def __init__(self, edges: list) -> None:
        self.edges = [np.asarray(e, dtype=np.float64) for e in edges]

    @classmethod
    def fit(cls, X: np.ndarray, n_bits: int) -> "ThresholdEncoding":
        """Edges for each column of X, at most 2**n_bits - 1 per column (at least one)."""
        n_levels = 2**n_bits
        edges = []
        for column in np.asarray(X, dtype=np.float64).T:
            values = np.unique(column)
            if len(values) <= n_levels:
                column_edges = (values[:-1] + values[1:]) / 2
            else:
                column_edges = np.unique(np.quantile(column, np.arange(1, n_levels) / n_levels))
            # a constant column still gets one (always-false) bit, so every party has an input
            edges.append(column_edges if len(column_edges) else values[:1])
        return cls(edges)

    @property
    def n_features(self) -> int:
        return len(self.edges)

    def n_bits(self, column: int) -> int:
        """How many bits encode `column`."""
        return len(self.edges[column])

    def levels(self, X: np.ndarray) -> np.ndarray:
        """Each value's level: how many of its column's edges lie strictly below it."""
        X = np.asarray(X, dtype=np.float64)
        return np.column_stack(
            [np.searchsorted(e, X[:, c], side="left") for c, e in enumerate(self.edges)]
        ).astype(np.int64)

    def bits(self, X: np.ndarray, columns: list[int]) -> np.ndarray:
        """The bits of `columns` of X, column after column: shape (rows, sum of their bit counts)."""
        X = np.asarray(X, dtype=np.float64)
        return np.concatenate([(X[:, [c]] > self.edges[c][None, :]) for c in columns], axis=1).astype(
            np.int64
        )

    def bit_layout(self, layout) -> BitLayout:
        """The bit layout of a `PartyLayout`'s parties under this encoding."""
        per_party = list(layout.columns.values())
        return BitLayout(
            columns=tuple(int(c) for columns in per_party for c in columns),
            column_bits=tuple(self.n_bits(c) for columns in per_party for c in columns),
            party_bits=tuple(sum(self.n_bits(c) for c in columns) for columns in per_party),
        )

    def bit_position(self, columns: list[int], column: int, level: int) -> int:
        """Index, in the bit vector of `columns`, of the bit [level of `column` > `level`]."""
        before = columns[: columns.index(column)]
        return sum(self.n_bits(c) for c in before) + level

    def to_dict(self) -> dict:
        """JSON-ready: `{"edges": [[...], ...]}` (floats round-trip exactly through JSON)."""
        return {"edges": [e.tolist() for e in self.edges]}

    @classmethod
    def from_dict(cls, data: dict) -> "ThresholdEncoding":
        return cls(data["edges"])
