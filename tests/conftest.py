"""Shared fixtures: the real challenge stub and real anonymizers under gunicorn on 127.0.0.1."""

import contextlib
import json
import os
import shutil
import sys

import pytest
import requests
from engine_cases import credit_split
from helpers import CREDIT_ENV, STUB_ROWS

from anonymizer.engines.runtime import start_fhe_runtime
from devtools.launch import GunicornServer

# this process runs circuits too (engine tests) and then talks HTTP: keep SIGPIPE ignored
start_fhe_runtime()


def pytest_sessionfinish(session, exitstatus):
    session.config.fhe_exit_status = int(exitstatus)


def pytest_unconfigure(config):
    """Exit with pytest's status: concrete's runtime, once started in a process, exits it with 0
    from its exit handler whatever happened (measured: a failing test gave `make test` status 0),
    so failures never reached make or CI. Exit handlers are skipped on failure; executor pools
    started here stop by themselves when their parent is gone."""
    status = getattr(config, "fhe_exit_status", 0)
    if status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


@pytest.fixture(scope="session")
def credit_data():
    """The stub's rows, split as the stub splits them: training, tuning, validation."""
    return credit_split()


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

    def start(parties=None, challenge_host=None, model_dir=None, port=None, **env) -> GunicornServer:
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
            "app:application", env=environment, port=port, log_path=model_dir.parent / f"{model_dir.name}.log"
        )
        server.model_dir = model_dir
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


def anonymizer_env(stub, model_dir, settings: dict) -> dict:
    """The environment of an anonymizer of the stub's credit data in `model_dir` with `settings`."""
    return {**CREDIT_ENV, "CHALLENGE_HOST": stub.host, "MODEL_DIR": str(model_dir), **settings}


@pytest.fixture(scope="session")
def fitted(tmp_path_factory, stub):
    """`fitted(**settings)`: (a template MODEL_DIR, its /fit answer's model) for these settings,
    fitted through HTTP once per session whichever modules ask; never changed (serve copies)."""
    templates = {}

    def template(**settings) -> tuple:
        key = json.dumps(settings, sort_keys=True)
        if key not in templates:
            model_dir = tmp_path_factory.mktemp("fitted-template") / "model"
            env = anonymizer_env(stub, model_dir, settings)
            with GunicornServer("app:application", env=env, log_path=model_dir.parent / "fit.log") as server:
                response = requests.post(server.url + "/fit", timeout=900)
                assert response.status_code == 201, response.text
            templates[key] = (model_dir, response.json()["model"])
        return templates[key]

    return template


@pytest.fixture(scope="session")
def serve_fitted(fitted, tmp_path_factory, stub):
    """`with serve_fitted(**settings) as server:` a real anonymizer (gunicorn, 2 workers) serving
    a private copy of the model `fitted(**settings)` made; `server.fit_info`, `server.model_dir`."""

    @contextlib.contextmanager
    def serve(**settings):
        template, fit_info = fitted(**settings)
        model_dir = tmp_path_factory.mktemp("served") / "model"
        shutil.copytree(template, model_dir)
        env = anonymizer_env(stub, model_dir, settings)
        server = GunicornServer("app:application", env=env, log_path=model_dir.parent / "served.log")
        server.model_dir, server.fit_info = model_dir, fit_info
        with server:
            yield server

    return serve


@pytest.fixture
def start_fitted(serve_fitted):
    """`start_fitted(**settings)`: `serve_fitted` for one test, stopped after it."""
    with contextlib.ExitStack() as stack:
        yield lambda **settings: stack.enter_context(serve_fitted(**settings))


@pytest.fixture(scope="module")
def fitted_anonymizer(serve_fitted):
    """An anonymizer with the stub's 3-party layout and default selection (fitted once per session)."""
    with serve_fitted() as server:
        yield server


@pytest.fixture(scope="session")
def fitted_template(tmp_path_factory, stub):
    """A MODEL_DIR with one fitted model (generated key beside it), to be copied, never changed."""
    from inprocess import InProcessServer, config_for

    model_dir = tmp_path_factory.mktemp("template") / "model"
    with InProcessServer(config_for(model_dir, stub)) as server:
        assert requests.post(server.url + "/fit", timeout=300).status_code == 201
    return model_dir


@pytest.fixture(scope="session")
def paillier_template(tmp_path_factory, stub):
    """A MODEL_DIR with one fitted Paillier (additive) model, to be copied, never changed."""
    import dataclasses

    from inprocess import InProcessServer, config_for

    from anonymizer.settings import ModelSpec

    model_dir = tmp_path_factory.mktemp("paillier-template") / "model"
    tree = ModelSpec(n_bits=4, additive=True, regularization=0.01, score_bits=5)
    config = dataclasses.replace(config_for(model_dir, stub), engine="paillier", tree=tree)
    with InProcessServer(config) as server:
        assert requests.post(server.url + "/fit", timeout=600).status_code == 201
    return model_dir


@pytest.fixture
def model_dir(fitted_template, tmp_path):
    """A private copy of the fitted template, free to damage."""
    copy = tmp_path / "model"
    shutil.copytree(fitted_template, copy)
    return copy


@pytest.fixture
def browser():
    """Headless Chromium (Debian's chromium and chromidriver), quit after the test."""
    from selenium import webdriver  # only the browser tests need selenium
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    yield driver
    driver.quit()
