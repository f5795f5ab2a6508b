"""Shared fixtures: the real challenge stub and real anonymizers under gunicorn on 127.0.0.1."""

import json
import shutil

import anomed_utils as utils
import numpy as np
import pytest
import requests

from anonymizer.fhe_runtime import start_fhe_runtime
from anonymizer.launch import GunicornServer
from challenge_stub.dataset import FEATURE_NAMES, PARTY_LAYOUT, make_credit_data

# this process runs circuits too (engine tests) and then talks HTTP: keep SIGPIPE ignored
start_fhe_runtime()

STUB_ROWS = 3000
# the stub's three parties, as an operator of the credit deployment configures them
CREDIT_ENV = {"ANONYMIZER_PARTIES": json.dumps(PARTY_LAYOUT), "FEATURE_NAMES": json.dumps(FEATURE_NAMES)}
TWO_PARTY_LAYOUT = {"applicant": [0, 2, 4, 5, 6, 7, 8, 9, 10, 11, 14], "bank": [1, 3, 12, 13]}


@pytest.fixture(scope="session")
def credit_data():
    """The stub's rows, split as the stub splits them: training, tuning, validation."""
    X, y = make_credit_data(STUB_ROWS, seed=0)
    n_train, n_tune = int(0.6 * STUB_ROWS), int(0.2 * STUB_ROWS)
    return {
        "training": (X[:n_train], y[:n_train]),
        "tuning": (X[n_train : n_train + n_tune], y[n_train : n_train + n_tune]),
        "validation": (X[n_train + n_tune :], y[n_train + n_tune :]),
    }


@pytest.fixture(scope="session")
def stub(tmp_path_factory):
    """The real challenge stub (anomed-challenge resources) on an ephemeral port."""
    logs = tmp_path_factory.mktemp("stub-logs")
    server = GunicornServer(
        "challenge_stub.wsgi:application",
        env={"STUB_ROWS": str(STUB_ROWS), "STUB_SEED": "0"},
        workers=1,
        log_path=logs / "stub.log",
    )
    with server:
        yield server


@pytest.fixture
def start_anonymizer(tmp_path_factory, stub):
    """Start real anonymizers (gunicorn, 2 workers); all are stopped after the test."""
    started = []

    def start(parties=None, challenge_host=None, model_dir=None, **env) -> GunicornServer:
        model_dir = model_dir or tmp_path_factory.mktemp("model")
        environment = {
            **CREDIT_ENV,
            "TREE_SELECTION": "off",  # fixed depth-5 tree: these tests are not about selection
            "CHALLENGE_HOST": challenge_host or stub.host,
            "MODEL_DIR": str(model_dir),
            "CHALLENGE_TIMEOUT": "10",
            **env,
        }
        if parties is not None:
            environment["ANONYMIZER_PARTIES"] = json.dumps(parties)
            environment.pop("FEATURE_NAMES")
        server = GunicornServer(
            "app:application", env=environment, log_path=model_dir.parent / f"{model_dir.name}.log"
        )
        server.model_dir = model_dir
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def fitted_anonymizer(tmp_path_factory, stub):
    """One anonymizer with the stub's 3-party layout and default selection, fitted once per module."""
    model_dir = tmp_path_factory.mktemp("fitted-model")
    server = GunicornServer(
        "app:application",
        env={**CREDIT_ENV, "CHALLENGE_HOST": stub.host, "MODEL_DIR": str(model_dir)},
        log_path=model_dir.parent / "fitted.log",
    )
    server.model_dir = model_dir
    with server:
        response = requests.post(server.url + "/fit", timeout=600)
        assert response.status_code == 201, response.text
        server.fit_info = response.json()["model"]
        yield server


def random_rows(n: int, seed: int) -> np.ndarray:
    """Fresh applicants from the same distribution (not in the stub's data)."""
    return make_credit_data(n, seed=seed)[0]


@pytest.fixture(scope="session")
def fitted_template(tmp_path_factory, stub):
    """A MODEL_DIR with one fitted model (generated key beside it), to be copied, never changed."""
    from inprocess import InProcessServer, config_for

    model_dir = tmp_path_factory.mktemp("template") / "model"
    with InProcessServer(config_for(model_dir, stub)) as server:
        assert requests.post(server.url + "/fit", timeout=300).status_code == 201
    return model_dir


@pytest.fixture
def model_dir(fitted_template, tmp_path):
    """A private copy of the fitted template, free to damage."""
    copy = tmp_path / "model"
    shutil.copytree(fitted_template, copy)
    return copy


def plaintext_labels(server, X) -> np.ndarray:
    """What plaintext `/predict` of `server` (anything with a `.url`) answers for the rows X."""
    response = requests.post(server.url + "/predict", data=utils.named_ndarrays_to_bytes({"X": X}))
    assert response.status_code == 201, response.text
    return utils.bytes_to_named_ndarrays(response.content)["prediction"]
