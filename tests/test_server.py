"""The falcon app in-process (falcon.testing): routing, status codes and error bodies."""

import anomed_utils as utils
import numpy as np
import pytest
from falcon import testing
from falcon.inspect import inspect_routes

from anonymizer.config import Config
from anonymizer.http.app import create_app
from devtools.launch import free_port


@pytest.fixture
def client(tmp_path):
    # a challenge host where nothing listens
    config = Config(challenge_host=f"127.0.0.1:{free_port()}", model_dir=tmp_path, max_body_bytes=1000)
    return testing.TestClient(create_app(config))


def test_status_reports_unfitted_model(client):
    response = client.simulate_get("/")
    assert response.status_code == 200
    assert response.json["fitted"] is False
    assert response.json["model_version"] is None


def test_predict_and_evaluate_before_fit_are_503(client):
    body = utils.named_ndarrays_to_bytes({"X": np.ones((1, 15))})
    assert client.simulate_post("/predict", body=body).status_code == 503
    assert client.simulate_post("/evaluate", params={"data_split": "tuning"}).status_code == 503


def test_unknown_data_split_is_400(client):
    response = client.simulate_post("/evaluate", params={"data_split": "training"})
    assert response.status_code == 400
    assert "data_split" in response.json["description"]
    assert client.simulate_post("/evaluate").status_code == 400


def test_fit_with_unreachable_challenge_is_503(client):
    response = client.simulate_post("/fit")
    assert response.status_code == 503
    assert "remote location" in response.json["description"]


def test_wrong_methods_are_405(client):
    assert client.simulate_get("/predict").status_code == 405
    assert client.simulate_get("/fit").status_code == 405


def test_openapi_document_covers_every_route_and_method(client):
    response = client.simulate_get("/openapi.json")
    assert response.status_code == 200
    documented = {(path, method.upper()) for path, item in response.json["paths"].items() for method in item}
    served = {
        (route.path, method.method)
        for route in inspect_routes(client.app)
        for method in route.methods
        if not method.internal
    }
    assert documented == served


@pytest.fixture
def fitted_client(tmp_path, credit_data):
    """The app in process over a model published to its store (a small depth-3 tree)."""
    from anonymizer.engines.registry import load_model
    from anonymizer.service.training import Anonymizer
    from anonymizer.settings import ModelSpec
    from anonymizer.state.models import ModelStore
    from anonymizer.state.vault import ModelKeySource

    config = Config(
        challenge_host=f"127.0.0.1:{free_port()}",
        model_dir=tmp_path,
        max_body_bytes=50_000,
        max_rows=100,
        max_key_bytes=1000,
        max_ciphertext_bytes=1000,
        selection=None,
    )
    app = create_app(config)
    store = ModelStore(tmp_path, ModelKeySource(tmp_path), load_model)
    X, y = credit_data["training"]
    anonymizer = Anonymizer(config.parties, ModelSpec(max_depth=3), store)
    anonymizer.fit(X[:300], y[:300])
    anonymizer.save(store.pointer_path)
    return testing.TestClient(app)


def test_size_caps_are_413(fitted_client):
    too_many_rows = utils.named_ndarrays_to_bytes({"X": np.ones((101, 15))})
    assert fitted_client.simulate_post("/predict", body=too_many_rows).status_code == 413
    too_big = utils.named_ndarrays_to_bytes(
        {"X": np.random.default_rng(0).random((100, 15)), "padding": np.random.default_rng(1).random(10_000)}
    )
    assert fitted_client.simulate_post("/predict", body=too_big).status_code == 413
    assert fitted_client.simulate_post("/fhe/keys", body=b"k" * 1001).status_code == 413
    big_part = {"Content-Type": "multipart/form-data; boundary=b"}
    body = b'--b\r\nContent-Disposition: form-data; name="bank"\r\n\r\n' + b"c" * 5000 + b"\r\n--b--\r\n"
    assert fitted_client.simulate_post("/predict", body=body, headers=big_part).status_code == 413
    fine = utils.named_ndarrays_to_bytes({"X": np.ones((100, 15))})
    assert fitted_client.simulate_post("/predict", body=fine).status_code == 201
