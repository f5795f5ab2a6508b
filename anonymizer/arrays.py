"""Safe npz decoding and feature-array checks for request bodies."""

import zipfile
import zlib

import anomed_utils as utils
import falcon
import numpy as np


def read_npz(body: bytes, expected: list[str]) -> dict[str, np.ndarray]:
    """Decode an npz body (never unpickling) or raise 400 naming what is wrong."""
    if not body:
        raise falcon.HTTPBadRequest(
            title="Empty body", description="Expected an npz body with arrays " f"{expected}."
        )
    try:
        # anomed_utils loads with numpy's default allow_pickle=False: object arrays raise ValueError;
        # a bare .npy body is an array, not an archive (AttributeError: no .files);
        # a bit-flipped compressed member fails inflating (zlib.error)
        arrays = utils.bytes_to_named_ndarrays(body)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, AttributeError,
            zlib.error) as error:
        raise falcon.HTTPBadRequest(
            title="Malformed npz",
            description=f"The body is not a readable npz archive without pickled objects: {error}",
        ) from error
    missing = [name for name in expected if name not in arrays]
    if missing:
        raise falcon.HTTPBadRequest(
            title="Missing array",
            description=f"The npz body lacks {missing}; it holds {sorted(arrays)}.",
        )
    return arrays


def check_features(X: np.ndarray, n_features: int, max_rows: int) -> np.ndarray:
    """Return X as float64 if it is a finite, numeric (rows, n_features) array; else raise 4xx."""
    if X.dtype.kind not in "biuf":
        raise falcon.HTTPBadRequest(
            title="Wrong dtype", description=f"X must be numeric, got dtype {X.dtype}."
        )
    if X.ndim != 2 or X.shape[1] != n_features:
        raise falcon.HTTPBadRequest(
            title="Wrong shape",
            description=f"X must have shape (rows, {n_features}), got {X.shape}.",
        )
    if X.shape[0] == 0:
        raise falcon.HTTPBadRequest(title="Wrong shape", description="X has no rows.")
    if X.shape[0] > max_rows:
        raise falcon.HTTPContentTooLarge(
            description=f"X has {X.shape[0]} rows; at most {max_rows} per request."
        )
    X = X.astype(np.float64, copy=False)
    if not np.isfinite(X).all():
        raise falcon.HTTPBadRequest(
            title="Non-finite values", description="X contains NaN or infinite values."
        )
    return X
