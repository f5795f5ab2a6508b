"""Trained models of every engine, one per case, trained once per test session (shared by the
engine-contract tests and each engine's own tests)."""

from functools import cache, lru_cache

import numpy as np
from helpers import STUB_ROWS, TWO_PARTY_LAYOUT

from anonymizer.engines.registry import engine_class
from anonymizer.parties import PartyLayout
from anonymizer.settings import ModelSpec
from challenge_stub.dataset import PARTY_LAYOUT, make_credit_data


def three_classes(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A 3-class label from the stub's rows: denied, approved, approved with high income."""
    return np.where(y == 0, 0, np.where(X[:, 5] > np.median(X[:, 5]), 2, 1))


# name: (engine, layout, params, three classes?, rows the FHE simulation checks)
CASES = {
    "thermometer: tree, 3 parties, binary": (
        "thermometer",
        PARTY_LAYOUT,
        ModelSpec(max_depth=5),
        False,
        500,
    ),
    "thermometer: forest, 2 non-contiguous parties, binary": (
        "thermometer",
        TWO_PARTY_LAYOUT,
        ModelSpec(4, n_estimators=3),
        False,
        500,
    ),
    "thermometer: tree, 2 non-contiguous parties, 3 classes": (
        "thermometer",
        TWO_PARTY_LAYOUT,
        ModelSpec(max_depth=4),
        True,
        500,
    ),
    "thermometer: forest, 3 parties, 3 classes": (
        "thermometer",
        PARTY_LAYOUT,
        ModelSpec(3, n_estimators=3, n_bits=4),
        True,
        500,
    ),
    "thermometer: boosted, 2 non-contiguous parties, binary": (
        "thermometer",
        TWO_PARTY_LAYOUT,
        ModelSpec(2, n_estimators=5, n_bits=4, boosted=True),
        False,
        500,
    ),
    "thermometer: additive, 3 parties, binary": (
        "thermometer",
        PARTY_LAYOUT,
        ModelSpec(n_bits=4, additive=True, regularization=0.03, score_bits=5),
        False,
        500,
    ),
    "thermometer: additive linear, 2 non-contiguous parties, 3 classes": (
        "thermometer",
        TWO_PARTY_LAYOUT,
        ModelSpec(n_bits=4, additive=True, regularization=0.1, score_bits=5, linear=True),
        True,
        500,
    ),
    "concrete-ml: tree, 3 parties, binary": ("concrete-ml", PARTY_LAYOUT, ModelSpec(), False, 200),
    "concrete-ml: tree, 2 non-contiguous parties, binary": (
        "concrete-ml",
        TWO_PARTY_LAYOUT,
        ModelSpec(),
        False,
        200,
    ),
}


def cases_of(engine: str) -> list[str]:
    """The case names of one engine."""
    return [name for name, case in CASES.items() if case[0] == engine]


@lru_cache(maxsize=1)
def credit_split():
    """The stub's rows, split as the stub splits them: training, tuning, validation."""
    X, y = make_credit_data(STUB_ROWS, seed=0)
    n_train, n_tune = int(0.6 * STUB_ROWS), int(0.2 * STUB_ROWS)
    return {
        "training": (X[:n_train], y[:n_train]),
        "tuning": (X[n_train : n_train + n_tune], y[n_train : n_train + n_tune]),
        "validation": (X[n_train + n_tune :], y[n_train + n_tune :]),
    }


def labels_for(name: str, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The case's labels for rows (X, y) of the stub."""
    return three_classes(X, y) if CASES[name][3] else y


@cache
def trained(name: str):
    """The compiled model of case `name` (trained once per session)."""
    engine, layout, params, _, _ = CASES[name]
    X, y = credit_split()["training"]
    return engine_class(engine).train(X, labels_for(name, X, y), PartyLayout(layout), params)
