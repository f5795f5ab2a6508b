"""What the HTTP layer reads from requests: bounded bodies, safe npz, feature checks, multipart."""

import zipfile
import zlib

import anomed_utils as utils
import falcon
import numpy as np


def read_npz(body: bytes, expected: list[str]) -> dict[str, np.ndarray]:
    """Decode an npz body (never unpickling) or raise 400 naming what is wrong."""
    if not body:
        raise falcon.HTTPBadRequest(
            title="Empty body", description=f"Expected an npz body with arrays {expected}."
        )
    try:
        # anomed_utils loads with numpy's default allow_pickle=False: object arrays raise ValueError;
        # a bare .npy body is an array, not an archive (AttributeError: no .files);
        # a bit-flipped compressed member fails inflating (zlib.error)
        arrays = utils.bytes_to_named_ndarrays(body)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, AttributeError, zlib.error) as error:
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


TEXT_FIELDS = ("key_id", "model_version", "keys_digest", "reasons")


def read_body(req: falcon.Request, max_bytes: int) -> bytes:
    """The request body, or 413 if it exceeds `max_bytes` (declared or actually sent)."""
    if req.content_length is not None and req.content_length > max_bytes:
        raise falcon.HTTPContentTooLarge(description=f"The body exceeds {max_bytes} bytes.")
    body = req.bounded_stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise falcon.HTTPContentTooLarge(description=f"The body exceeds {max_bytes} bytes.")
    return body


def read_encrypted_form(req: falcon.Request, layout, max_ciphertext_bytes: int):
    """Text fields and {party index: ciphertext} of a multipart body; 4xx for anything odd."""
    if req.content_length is None:
        raise falcon.HTTPLengthRequired(description="Send a Content-Length with multipart bodies.")
    limit = max_ciphertext_bytes * (len(layout.names) + 1)
    if req.content_length > limit:
        raise falcon.HTTPContentTooLarge(description=f"The body exceeds {limit} bytes.")
    fields: dict[str, str] = {}
    ciphertexts: dict[int, bytes] = {}
    req.context.body_parsed = True  # the multipart parser reads past the bounded stream's count
    try:
        for part in req.get_media():
            name = part.name
            if name in fields or (name in layout.names and layout.index_of(name) in ciphertexts):
                raise falcon.HTTPBadRequest(description=f"The part {name!r} appears twice.")
            if name in TEXT_FIELDS:
                fields[name] = part.get_text() or ""
            elif name in layout.names:
                ciphertexts[layout.index_of(name)] = part.get_data()
            else:
                raise falcon.HTTPBadRequest(
                    description=f"Unknown part {name!r}: expected {list(TEXT_FIELDS)} "
                    f"and parties {layout.names}."
                )
    except falcon.MediaMalformedError as error:
        raise falcon.HTTPBadRequest(
            title="Malformed multipart body", description=str(error.description)
        ) from error
    return fields, ciphertexts
