"""Plaintext prediction with bounded memory (the AnoMed `/predict` and `/evaluate` paths)."""

import numpy as np
from anomed_anonymizer import batch_views


def predict_in_batches(model, X: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's labels for X, computed `batch_size` rows at a time to bound memory."""
    return np.concatenate([model.predict(batch) for batch in batch_views(X, batch_size)])
