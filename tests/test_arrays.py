import io
import pickle

import anomed_utils as utils
import falcon
import numpy as np
import pytest

from anonymizer.http.inputs import check_features, read_npz


def npz(**arrays) -> bytes:
    return utils.named_ndarrays_to_bytes(arrays)


def test_read_npz_returns_named_arrays():
    X = np.ones((2, 3))
    assert np.array_equal(read_npz(npz(X=X), ["X"])["X"], X)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not an npz",
        npz(X=np.ones((2, 3)))[:40],  # truncated
        pickle.dumps({"X": np.ones((2, 3))}),
        npz(X=np.array([{"a": 1}], dtype=object)),  # object arrays need pickle
        b'{"X": [[1, 2]]}',
    ],
)
def test_read_npz_refuses_malformed_and_pickled_bodies(body):
    with pytest.raises(falcon.HTTPBadRequest):
        read_npz(body, ["X"])


def test_read_npz_names_missing_arrays():
    with pytest.raises(falcon.HTTPBadRequest) as error:
        read_npz(npz(Y=np.ones(2)), ["X"])
    assert "['X']" in error.value.description


def test_plain_npy_is_refused():
    buffer = io.BytesIO()
    np.save(buffer, np.ones((2, 3)))
    with pytest.raises(falcon.HTTPBadRequest):
        read_npz(buffer.getvalue(), ["X"])


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
