"""What the HTTP layer reads from an npz body: X only, its header checked before any allocation."""

import io
import pickle
import tracemalloc
import zipfile

import anomed_utils as utils
import falcon
import numpy as np
import pytest
from numpy.lib import format as npy_format

from anonymizer.http.inputs import ArrayLimits, check_features, read_features

LIMITS = ArrayLimits(max_rows=1000, max_array_bytes=1000 * 3 * 8)


def npz(**arrays) -> bytes:
    return utils.named_ndarrays_to_bytes(arrays)


def read_npz(body: bytes, expected=None) -> np.ndarray:
    return read_features(body, 3, LIMITS)


def forged_npz(
    shape, dtype="<f8", data: bytes = b"", fortran: bool = False, extra: dict | None = None
) -> bytes:
    """An npz whose X.npy header declares `shape` and `dtype`, followed by only `data`."""
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": fortran, "shape": shape})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("X.npy", header.getvalue() + data)
        for name, member in (extra or {}).items():
            archive.writestr(name, member)
    return buffer.getvalue()


def test_read_features_returns_X_in_either_memory_order():
    X = np.arange(6, dtype=np.int16).reshape(2, 3)
    assert np.array_equal(read_npz(npz(X=X)), X)
    assert np.array_equal(read_npz(npz(X=np.asfortranarray(X * 1.5))), X * 1.5)
    assert read_npz(npz(X=X)).dtype == np.float64


@pytest.mark.parametrize(
    "shape, error",
    [
        ((10**9, 3), falcon.HTTPContentTooLarge),  # 24 GB declared in a few hundred bytes
        ((2**62, 3), falcon.HTTPContentTooLarge),
        ((-1, 3), falcon.HTTPBadRequest),
        ((10, 10**9), falcon.HTTPBadRequest),
        ((10**5,), falcon.HTTPBadRequest),
    ],
)
def test_a_header_that_declares_too_much_is_refused_before_any_allocation(shape, error):
    body = forged_npz(shape)
    assert len(body) < 400
    tracemalloc.start()
    try:
        with pytest.raises(error):
            read_npz(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_rows_within_the_row_limit_but_over_the_byte_limit_are_413():
    limits = ArrayLimits(max_rows=1000, max_array_bytes=100 * 3 * 8)
    with pytest.raises(falcon.HTTPContentTooLarge) as error:
        read_features(npz(X=np.ones((101, 3))), 3, limits)
    assert "MAX_ARRAY_BYTES" in error.value.description
    assert read_features(npz(X=np.ones((100, 3))), 3, limits).shape == (100, 3)


def test_a_deflated_bomb_behind_a_small_header_is_400_after_reading_what_the_header_declares():
    bomb = forged_npz((2, 3), data=np.ones((2, 3)).tobytes() + bytes(200_000_000))
    assert len(bomb) < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(falcon.HTTPBadRequest) as error:
            read_npz(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "more data than" in error.value.description and peak < 10_000_000


def test_only_X_is_read():
    other = bytes(200_000_000)  # never inflated
    body = forged_npz((1, 3), data=np.ones((1, 3)).tobytes(), extra={"Y.npy": other})
    assert np.array_equal(read_npz(body), np.ones((1, 3)))


def test_a_header_that_promises_more_than_its_data_is_400():
    with pytest.raises(falcon.HTTPBadRequest) as error:
        read_npz(forged_npz((5, 3), data=np.ones((2, 3)).tobytes()))
    assert "ends before" in error.value.description


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not an npz",
        npz(X=np.ones((2, 3)))[:40],  # truncated
        pickle.dumps({"X": np.ones((2, 3))}),
        npz(X=np.array([{"a": 1}] * 3, dtype=object).reshape(1, 3)),  # object arrays need pickle
        forged_npz((1, 3), dtype="|O", data=b"\x80" * 8),
        forged_npz((1, 3), dtype=[("a", "<f8")], data=bytes(24)),
        npz(X=np.array([["a", "b", "c"]])),
        b'{"X": [[1, 2]]}',
    ],
)
def test_read_features_refuses_malformed_and_pickled_bodies(body):
    with pytest.raises(falcon.HTTPBadRequest):
        read_npz(body)


def test_read_features_names_missing_arrays():
    with pytest.raises(falcon.HTTPBadRequest) as error:
        read_npz(npz(Y=np.ones(2)))
    assert "lacks X" in error.value.description and "Y" in error.value.description


def test_plain_npy_is_refused():
    buffer = io.BytesIO()
    np.save(buffer, np.ones((2, 3)))
    with pytest.raises(falcon.HTTPBadRequest):
        read_npz(buffer.getvalue())


@pytest.mark.parametrize(
    "X",
    [
        np.ones(3),
        np.ones((2, 3, 1)),
        np.ones((2, 4)),
        np.ones((0, 3)),
        np.array([["a", "b", "c"]]),
        np.array([[1.0, np.nan, 2.0]]),
        np.array([[1.0, np.inf, 2.0]]),
    ],
)
def test_check_features_refuses_bad_arrays(X):
    with pytest.raises(falcon.HTTPBadRequest):
        check_features(X, n_features=3, max_rows=10)


def test_check_features_caps_rows_and_accepts_ints():
    with pytest.raises(falcon.HTTPContentTooLarge):
        check_features(np.ones((11, 3)), n_features=3, max_rows=10)
    checked = check_features(np.ones((2, 3), dtype=np.int32), n_features=3, max_rows=10)
    assert checked.dtype == np.float64
