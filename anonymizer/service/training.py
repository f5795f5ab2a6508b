"""The AnoMed anonymizer object: checks the data, selects and trains a model, publishes it."""

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from anomed_anonymizer import SupervisedLearningAnonymizer, batch_views

from ..engines.registry import engine_class
from ..parties import PartyLayout
from ..settings import ModelSpec, SelectionPolicy
from .selection import select_model

if TYPE_CHECKING:
    from ..state.models import ModelStore

_logger = logging.getLogger(__name__)

MIN_TRAINING_ROWS = 10


def resolve_layout(layout: PartyLayout | None, n_features: int) -> PartyLayout:
    """The configured layout, or one data holder owning every column when none is configured."""
    return layout if layout is not None else PartyLayout.single(n_features)


def check_training_data(X: np.ndarray, y: np.ndarray, layout: PartyLayout | None) -> None:
    """Raise ValueError (LayoutError for the layout) unless (X, y) can train a model."""
    if X.ndim != 2 or X.dtype.kind not in "biuf":
        raise ValueError(f"X must be a 2-d numeric array, got {X.dtype} {X.shape}.")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must be 1-d with one label per row of X, got {y.shape}.")
    if y.dtype.kind not in "biu":
        raise ValueError(f"y must hold integer (or boolean) class labels, got dtype {y.dtype}.")
    if X.shape[0] < MIN_TRAINING_ROWS:
        raise ValueError(f"At least {MIN_TRAINING_ROWS} training rows are needed, got {X.shape[0]}.")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values.")
    if len(np.unique(y)) < 2:
        raise ValueError("y must contain at least two classes.")
    resolve_layout(layout, X.shape[1]).check_width(X.shape[1])


class Anonymizer(SupervisedLearningAnonymizer):
    """Trains the configured engine's model (selected or as given) and publishes it to the store."""

    def __init__(
        self,
        layout: PartyLayout | None,
        params: ModelSpec,
        store: "ModelStore",
        policy: SelectionPolicy | None = None,
        engine: str = "thermometer",
    ) -> None:
        """`policy` None trains `params` as given; otherwise selection picks the parameters."""
        self._layout = layout
        self._params = params
        self._policy = policy
        self._store = store
        self._engine = engine_class(engine)
        self._model = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> None:
        """Select (unless parameters are fixed) and train; the first ranked model that trains wins."""
        check_training_data(X, y, self._layout)
        X = X.astype(np.float64)
        layout = resolve_layout(self._layout, X.shape[1])
        ranked, selection = [self._params], None
        if self._policy is not None:
            selection = select_model(X, y, layout, self._policy, self._engine)
            ranked = selection.ranked
        errors = []
        for params in ranked:
            try:
                self._model = self._engine.train(X, y, layout, params)
                break
            except (ValueError, RuntimeError) as error:  # retrained on all rows: may not compile
                _logger.warning("training %s failed: %s", params.label(), error)
                errors.append(f"{params.label()}: {error}")
        else:
            raise ValueError("No candidate model could be trained: " + "; ".join(errors))
        if selection is not None:
            self._model.info["selection"] = {**selection.summary(), "trained": params.label()}

    def predict(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Labels of the fitted model, `batch_size` rows at a time."""
        assert self._model is not None, "fit first"
        return np.concatenate([self._model.predict(b) for b in batch_views(X, batch_size)])

    def save(self, filepath: str | Path) -> None:
        """Publish the fitted model as a new store version (`filepath` is the store's pointer)."""
        assert self._model is not None, "fit first"
        assert Path(filepath) == self._store.pointer_path
        self._store.publish(self._model, {"fitted_at": time.time()})

    def validate_input(self, feature_array: np.ndarray) -> None:
        """Raise LayoutError unless the array's width fits the layout."""
        width = feature_array.shape[1] if feature_array.ndim == 2 else -1
        resolve_layout(self._layout, width).check_width(width)
