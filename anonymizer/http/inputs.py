"""What the HTTP layer reads from requests: bounded bodies, safe npz, feature checks, multipart."""

import io
import zipfile
import zlib
from dataclasses import dataclass

import falcon
import numpy as np
from numpy.lib import format as npy_format


@dataclass(frozen=True)
class ArrayLimits:
    """How much one plaintext request may ask for: rows, and bytes of X as float64."""

    max_rows: int
    max_array_bytes: int


NPY_VERSIONS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
MAX_NPY_HEADER = 10_000  # bytes: numpy's own default bound on a header it will parse


def _malformed(expected: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(
        title="Malformed npz",
        description=f"The body is not an npz archive holding {expected} as a plain numeric .npy array.",
    )


def read_features(body: bytes, n_features: int, limits: ArrayLimits) -> np.ndarray:
    """`X` of an npz body, as float64 rows of `n_features` columns, or 4xx naming what is wrong.

    Only the member `X.npy` is read, and only after its .npy header (shape, dtype) is checked
    against `limits`: a few hundred bytes that declare 10^9 rows allocate nothing. Never unpickles.
    """
    if not body:
        raise falcon.HTTPBadRequest(title="Empty body", description="Expected an npz body with the array X.")
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        names = archive.namelist()
        if "X.npy" not in names:
            raise falcon.HTTPBadRequest(
                title="Missing array",
                description=f"The npz body lacks X; it holds {sorted(n.removesuffix('.npy') for n in names)[:20]}.",
            )
        with archive.open("X.npy") as member:
            shape, fortran_order, dtype = _npy_header(member)
            _check_declared(shape, dtype, n_features, limits)
            data = member.read(_nbytes(shape, dtype))
            trailing = member.read(1)  # one byte, not the rest: a bomb may follow a small header
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError, NotImplementedError):
        # the library's own message is not echoed: it may name internals
        raise _malformed("X") from None
    if len(data) != _nbytes(shape, dtype):
        raise falcon.HTTPBadRequest(
            title="Malformed npz", description=f"X.npy ends before the {shape} values its header declares."
        )
    if trailing:
        raise falcon.HTTPBadRequest(
            title="Malformed npz",
            description=f"X.npy holds more data than the {shape} values its header declares.",
        )
    X = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    return check_features(X, n_features, limits.max_rows)


def _npy_header(member) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = npy_format.read_magic(member)
    if version not in NPY_VERSIONS:
        raise ValueError(f"npy format version {version}")
    return NPY_VERSIONS[version](member, max_header_size=MAX_NPY_HEADER)


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=object)) * dtype.itemsize


def _check_declared(shape: tuple[int, ...], dtype: np.dtype, n_features: int, limits: ArrayLimits) -> None:
    """The header's promise against the limits, before a byte of data is read (4xx)."""
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise falcon.HTTPBadRequest(title="Wrong dtype", description=f"X must be numeric, got dtype {dtype}.")
    if len(shape) != 2 or shape[1] != n_features or shape[0] < 0:
        raise falcon.HTTPBadRequest(
            title="Wrong shape", description=f"X must have shape (rows, {n_features}), got {shape}."
        )
    if shape[0] > limits.max_rows:
        raise falcon.HTTPContentTooLarge(
            title="Too many rows",
            description=f"X has {shape[0]} rows; at most {limits.max_rows} per request.",
        )
    if shape[0] * n_features * 8 > limits.max_array_bytes:  # as float64, what is computed on
        raise falcon.HTTPContentTooLarge(
            title="Array too large",
            description=f"X of shape {shape} takes {shape[0] * n_features * 8} bytes as float64; at most "
            f"{limits.max_array_bytes} per request (MAX_ARRAY_BYTES): send fewer rows per request.",
        )


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


TEXT_FIELDS = ("key_id", "model_version", "keys_digest", "reasons", "explain", "rows")


def read_body(req: falcon.Request, max_bytes: int, read: bool = True) -> bytes:
    """The request body, or 413 if it exceeds `max_bytes` (declared or actually sent); with
    `read` False only the declared size is checked (nothing is read)."""
    if req.content_length is not None and req.content_length > max_bytes:
        raise falcon.HTTPContentTooLarge(description=f"The body exceeds {max_bytes} bytes.")
    if not read:
        return b""
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
