"""The thermometer family: a tree, random forest, boosted trees or an additive model on threshold
bits, as a clear integer program that a backend computes: concrete TFHE (`ThermometerModel`,
thermometer/backend.py: trees as table lookups, `LeafSum`) or Paillier (`PaillierModel`, paillier/:
trees as path costs, `LeafPaths`); additive models are a `ScoreSum` on both.
"""

from pathlib import Path

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from ...parties import PartyLayout
from ...settings import ModelSpec
from ...state.vault import Vault
from ...wire import explained_column, rows_in
from ..base import REASONS, FHEModel
from .backend import ThermometerConcrete
from .encoding import ThresholdEncoding
from .explain import explain_columns, explain_outputs
from .leafpaths import LeafPaths
from .leafsum import LeafSum
from .reasons import reason_columns, reason_groups, reasons_outputs
from .scoresum import ScoreSum, fit_logistic

# boosted trees' shrinkage: one value for every dataset (few trees, so not the usual 0.1)
BOOSTING_LEARNING_RATE = 0.5


def fit_estimator(levels: np.ndarray, y: np.ndarray, params: ModelSpec):
    """A scikit-learn tree or random forest fitted on encoded levels; returns its list of trees."""
    common = dict(
        max_depth=params.max_depth,
        min_samples_leaf=params.min_samples_leaf,
        random_state=params.random_state,
    )
    if params.n_estimators > 1:
        forest = RandomForestClassifier(n_estimators=params.n_estimators, **common).fit(levels, y)
        return forest.estimators_
    return [DecisionTreeClassifier(**common).fit(levels, y)]


def boosted_program(
    levels: np.ndarray, y: np.ndarray, params: ModelSpec, encoding, layout: PartyLayout, capabilities
) -> tuple[LeafSum | LeafPaths, list]:
    """Gradient-boosted trees on encoded levels (y in {0, 1}) as the backend's tree program (a
    LeafSum of lookups, or LeafPaths), and the trees."""
    if len(np.unique(y)) != 2:
        raise ValueError("Boosted trees are served for two classes only.")
    booster = GradientBoostingClassifier(
        n_estimators=params.n_estimators,
        learning_rate=BOOSTING_LEARNING_RATE,
        max_depth=params.max_depth,
        min_samples_leaf=params.min_samples_leaf,
        random_state=params.random_state,
    ).fit(levels, y)
    trees = list(booster.estimators_[:, 0])
    leaf_values = [BOOSTING_LEARNING_RATE * t.tree_.value[:, 0, 0] for t in trees]
    prior = float(np.mean(y))  # the log-loss booster starts from the prior's log-odds
    initial = float(np.log(prior / (1 - prior)))
    if capabilities.tree_lookups:
        program = LeafSum.from_boosted(trees, leaf_values, initial, encoding, layout, params.block_bits)
    else:
        program = LeafPaths.from_boosted(trees, leaf_values, initial, encoding, layout)
    return program, trees


# the circuit programs by the key their matrices are stored under
PROGRAMS = {program.kind: program for program in (LeafSum, ScoreSum, LeafPaths)}


def additive_score_sum(
    bits: np.ndarray, targets: np.ndarray, params: ModelSpec, encoding, layout: PartyLayout, n_classes: int
) -> ScoreSum:
    """An additive model: logistic regression on the stacked party bits, as integer points."""
    bit_layout = encoding.bit_layout(layout)
    wanted = dict(params.monotone)
    directions = tuple(wanted.get(c, 0) for c in bit_layout.columns) if wanted else ()
    coefficients, intercepts = fit_logistic(
        bits, targets, list(bit_layout.column_bits), params.regularization, params.linear, directions
    )
    return ScoreSum.from_logistic(coefficients, intercepts, encoding, layout, n_classes, params.score_bits)


class ThermometerModel(FHEModel):
    """A model on threshold bits as its circuit's clear function, the circuit's *program*: a
    `LeafSum` or `LeafPaths` (trees) or a `ScoreSum` (additive)."""

    engine = "thermometer"
    backend_type = ThermometerConcrete
    builds_ensembles = True
    builds_additive = True
    builds_path_costs = True
    shares_in_clear = True

    def __init__(
        self,
        layout: PartyLayout,
        encoding: ThresholdEncoding,
        program: LeafSum | ScoreSum | LeafPaths,
        classes: np.ndarray,
        info: dict | None = None,
    ) -> None:
        super().__init__(layout, info)
        self.encoding = encoding
        self.program = program
        self.classes = np.asarray(classes)

    @classmethod
    def build(
        cls, X: np.ndarray, y: np.ndarray, layout: PartyLayout, params: ModelSpec
    ) -> "ThermometerModel":
        """Fit the encoding and the trees and cut them into blocks (no compilation)."""
        encoding = ThresholdEncoding.fit(X, params.n_bits)
        classes, counts = np.unique(y, return_counts=True)
        if params.majority:
            bit_layout, winner = encoding.bit_layout(layout), int(np.argmax(counts))
            if cls.capabilities.tree_lookups:
                constant = LeafSum.constant(
                    list(bit_layout.party_bits), len(classes), winner, params.block_bits
                )
            else:  # a backend without lookups: the constant as an additive model, every point 0
                constant = ScoreSum.constant(bit_layout, len(classes), winner)
            return cls(layout, encoding, constant, classes, info={"tree_depth": 0, "tree_leaves": 1})
        targets = np.searchsorted(classes, y)
        if params.additive:
            bits = np.concatenate([encoding.bits(X, cols) for cols in layout.columns.values()], axis=1)
            score_sum = additive_score_sum(bits, targets, params, encoding, layout, len(classes))
            shape = {"tree_depth": 0, "tree_leaves": 0, "score_outputs": score_sum.n_outputs}
            return cls(layout, encoding, score_sum, classes, info=shape)
        levels = encoding.levels(X)
        if params.boosted:
            program, trees = boosted_program(levels, targets, params, encoding, layout, cls.capabilities)
        else:
            trees = fit_estimator(levels, targets, params)
            if cls.capabilities.tree_lookups:
                program = LeafSum.from_trees(trees, encoding, layout, len(classes), params.block_bits)
            else:
                program = LeafPaths.from_trees(trees, encoding, layout, len(classes))
        shape = {
            "tree_depth": max(int(t.get_depth()) for t in trees),
            "tree_leaves": sum(int(t.get_n_leaves()) for t in trees),
        }
        return cls(layout, encoding, program, classes, info=shape)

    @classmethod
    def hyperparameters(cls, params: ModelSpec) -> dict:
        if params.additive:
            return {
                "model": params.family,
                "regularization": params.regularization,
                "linear": params.linear,
                "monotone": [list(pair) for pair in params.monotone],
                "score_bits": params.score_bits,
                "n_bits": params.n_bits,
            }
        return {
            "model": params.family,
            "n_estimators": params.n_estimators,
            **super().hyperparameters(params),
            "block_bits": params.block_bits,
        }

    def party_bits(self, X: np.ndarray) -> list[np.ndarray]:
        """What each party encrypts for the rows of X: its threshold bits, in argument order."""
        return [self.encoding.bits(X, columns) for columns in self.layout.columns.values()]

    def circuit_arguments(self, X: np.ndarray) -> list[tuple]:
        bits = self.party_bits(X)
        return [tuple(z[i] for z in bits) for i in range(X.shape[0])]

    @property
    def gives_reasons(self) -> bool:
        """Whether this model's program can give reason codes: two-class additive models."""
        return self.program.gives_reasons

    def column_sizes(self, party: str) -> list[int]:
        """Bits of each of `party`'s columns, in its argument order."""
        return [self.encoding.n_bits(column) for column in self.layout.columns[party]]

    def reasons(self, X: np.ndarray) -> np.ndarray:
        """(rows, 1 + m) what the `reasons` function outputs for X, in the clear: the decision
        output, then the points lost in each column of `reason_columns` (docs/engine.md)."""
        return reasons_outputs(self.program, self.party_bits(X))

    def explanations(self, X: np.ndarray, feature: int) -> np.ndarray:
        """(rows, levels, ...) what `explain/<feature>` outputs for X, in the clear: the decision
        output at each level of `feature` (explain.py)."""
        column = next(
            c for c in explain_columns(self.program, self.encoding, self.layout) if c.feature == feature
        )
        return explain_outputs(self.program, self.party_bits(X), column)

    def decisions_in(self, function: str) -> int:
        """A batched explanation shows one decision per level of its feature, several rows one
        per row."""
        feature = explained_column(function)
        if feature is not None:
            return self.encoding.n_bits(feature) + 1
        return rows_in(function) or 1

    def outputs(self, X: np.ndarray) -> np.ndarray:
        """The circuit's integer output for each row of X, computed in the clear."""
        return self.program.outputs(self.party_bits(X))

    def labels(self, outputs: np.ndarray) -> np.ndarray:
        """Class labels from circuit outputs (most votes or probability; the first class on ties)."""
        return self.classes[np.argmax(self.program.shares(outputs), axis=1)]

    def class_shares(self, X: np.ndarray) -> np.ndarray:
        """(rows, classes) vote shares or probabilities: what the parties decode, in the clear."""
        return self.program.shares(self.outputs(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels for X: exactly the served circuit's function, in the clear."""
        return self.labels(self.outputs(X))

    def public_description(self) -> dict:
        """What a party needs besides the client specs: its columns' edges and how to decode."""
        return {
            "engine": self.engine,
            "encoding": {
                party: {"columns": columns, "edges": [self.encoding.edges[c].tolist() for c in columns]}
                for party, columns in self.layout.columns.items()
            },
            "decoding": self.program.decoding,
            "functions": self.functions,
            **self._reasons_description(),
            **self.backend.describe(self),
        }

    def _reasons_description(self) -> dict:
        """Where the model serves reasons: which column each entry after the first is."""
        if REASONS not in self.functions:
            return {}
        order = self.encoding.bit_layout(self.layout).columns
        columns = reason_columns(self.program)
        return {
            "reasons": {
                "columns": [order[c.column] for c in columns],
                "radices": [c.radix for c in columns],  # how the TFHE output packs them
                "groups": reason_groups(self.program),
            }
        }

    def metadata_fields(self, directory: Path, vault: Vault) -> dict:
        """What `from_stored` rebuilds the model from: classes, encoding and the program."""
        return {
            "classes": self.classes.tolist(),
            "label_dtype": self.classes.dtype.str,
            "encoding": self.encoding.to_dict(),
            self.program.kind: self.program.to_dict(),
        }

    @classmethod
    def from_stored(cls, directory: Path, meta: dict, vault: Vault) -> "ThermometerModel":
        info = meta["info"]
        return cls(
            PartyLayout(info["parties"]),
            ThresholdEncoding.from_dict(meta["encoding"]),
            next(kind.from_dict(meta[key]) for key, kind in PROGRAMS.items() if key in meta),
            np.asarray(meta["classes"], dtype=np.dtype(meta["label_dtype"])),
            info=info,
        )
