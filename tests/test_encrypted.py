"""Encrypted multi-party scoring through gunicorn: keys, per-party ciphertexts, staging, errors."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from concrete import fhe
from helpers import (
    TWO_PARTY_LAYOUT,
    multipart,
    plaintext_labels,
    quiet_party,
    random_rows,
    run_protocol_example,
)

from anonymizer.party import PartyClient
from devtools.launch import ROOT


def by_party(parties: dict, row: np.ndarray) -> dict:
    return {party: row[columns].tolist() for party, columns in parties.items()}


@pytest.fixture(scope="module")
def party(fitted_anonymizer, tmp_path_factory):
    """A party client with keys generated and the evaluation key uploaded."""
    client = PartyClient(fitted_anonymizer.url, tmp_path_factory.mktemp("party"), log=lambda m: None)
    client.key_id()
    return client


def test_info_and_specs_describe_the_served_circuit(fitted_anonymizer):
    info = requests.get(fitted_anonymizer.url + "/fhe/info").json()
    assert info["model_version"] == fitted_anonymizer.fit_info["model_version"]
    assert info["parties"] == fitted_anonymizer.fit_info["parties"]
    assert info["n_features"] == 15 and len(info["feature_names"]) == 15
    assert info["classes"] == [0, 1]
    assert info["engine"] == "thermometer" and list(info["encoding"]) == list(info["parties"])
    specs = requests.get(fitted_anonymizer.url + "/fhe/specs")
    assert specs.status_code == 200
    fhe.ClientSpecs.deserialize(specs.content)  # loads in a stock concrete client
    assert specs.headers["X-Model-Version"] == info["model_version"]


def test_encrypted_decisions_equal_plaintext_predict(fitted_anonymizer, party):
    X = random_rows(5, seed=31)
    parties = party.info().parties
    decisions = [party.score(by_party(parties, row))[0] for row in X]
    assert decisions == plaintext_labels(fitted_anonymizer, X).tolist()


def test_two_party_non_contiguous_layout_encrypted(start_anonymizer, tmp_path):
    server = start_anonymizer(parties=TWO_PARTY_LAYOUT)
    assert requests.post(server.url + "/fit").status_code == 201
    client = quiet_party(server.url, tmp_path / "party")
    assert client.info().feature_names is None  # custom layout, no FEATURE_NAMES given
    X = random_rows(5, seed=32)
    decisions = [client.score(by_party(TWO_PARTY_LAYOUT, row))[0] for row in X]
    assert decisions == plaintext_labels(server, X).tolist()


def cli(workdir: Path, server, *args) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "anonymizer.party",
        "--server",
        server.url,
        "--workdir",
        str(workdir),
        "--keys-dir",
        str(workdir / "shared-keys"),
        *args,
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_three_client_processes_stage_their_own_parts(fitted_anonymizer, tmp_path):
    row = random_rows(1, seed=33)[0]
    parties = requests.get(fitted_anonymizer.url + "/fhe/info").json()["parties"]
    values = by_party(parties, row)
    setup = cli(tmp_path, fitted_anonymizer, "upload-key")
    assert setup.returncode == 0, setup.stderr
    assert "keygen done" in setup.stderr and "uploaded" in setup.stderr
    key_dir = next((tmp_path / "shared-keys").iterdir())
    assert all(p.stat().st_mode & 0o077 == 0 for p in [key_dir, *key_dir.rglob("*")])
    with ThreadPoolExecutor(2) as pool:
        staged = list(
            pool.map(
                lambda p: cli(
                    tmp_path, fitted_anonymizer, "stage", "--party", p, "--values", json.dumps(values[p])
                ),
                ["bank", "credit_bureau"],
            )
        )
    assert all(s.returncode == 0 for s in staged), [s.stderr for s in staged]
    result = cli(
        tmp_path, fitted_anonymizer, "predict", "--input", "applicant=" + json.dumps(values["applicant"])
    )
    assert result.returncode == 0, result.stderr
    assert "FHE execution on the server took" in result.stderr
    decision = json.loads(result.stdout)["decision"]
    assert decision == plaintext_labels(fitted_anonymizer, row[None, :])[0]
    again = cli(
        tmp_path, fitted_anonymizer, "predict", "--input", "applicant=" + json.dumps(values["applicant"])
    )
    assert again.returncode == 1 and "No ciphertext sent or staged for" in again.stderr


def test_bad_ciphertexts_are_400_and_staged_inputs_survive(fitted_anonymizer, party):
    row = random_rows(1, seed=34)[0]
    values = by_party(party.info().parties, row)
    good = {p: party.encrypt(p, v) for p, v in values.items()}
    party.stage("bank", good["bank"])
    party.stage("credit_bureau", good["credit_bureau"])
    key_id = party.key_id()
    url = fitted_anonymizer.url + "/predict"
    for bad in [b"garbage", good["applicant"][: len(good["applicant"]) // 2], good["bank"]]:
        response = requests.post(url, files=multipart(key_id, applicant=bad))
        assert response.status_code == 400, response.text
        assert "applicant" in response.json()["description"]
    response = requests.post(url, files=multipart(key_id, applicant=good["applicant"]))
    assert response.status_code == 201
    assert party.decrypt(response.content)[0] == plaintext_labels(fitted_anonymizer, row[None])[0]


def test_malformed_requests_are_4xx(fitted_anonymizer, party):
    url = fitted_anonymizer.url
    key_id = party.key_id()
    ciphertext = party.encrypt("bank", [10])
    cases = [
        (requests.post(url + "/predict", files={"applicant": ("a", ciphertext)}), 400),
        (requests.post(url + "/predict", files=multipart("A" * 22, bank=ciphertext)), 404),
        (requests.post(url + "/predict", files=multipart("../../etc/passwd", bank=ciphertext)), 404),
        (requests.post(url + "/predict", files=multipart(key_id, insurer=ciphertext)), 400),
        (
            requests.post(
                url + "/predict",
                files=[("key_id", (None, key_id)), ("bank", ("b", ciphertext)), ("bank", ("b", ciphertext))],
            ),
            400,
        ),
        (requests.put(f"{url}/fhe/keys/{key_id}/inputs/insurer", data=ciphertext), 404),
        (requests.put(f"{url}/fhe/keys/..%2F..%2Fx/inputs/bank", data=ciphertext), 404),
        (requests.put(f"{url}/fhe/keys/{key_id}/inputs/bank", data=b""), 400),
        (requests.post(url + "/fhe/keys", data=b""), 400),
        (requests.post(url + "/fhe/keys", data=b"not keys" * 100), 400),
        (
            requests.post(
                url + "/predict", data=b"--x\r\n", headers={"Content-Type": "multipart/form-data; boundary=x"}
            ),
            400,
        ),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.json()["title"]
    assert not any(p.name.startswith("..") for p in fitted_anonymizer.model_dir.rglob("*"))


def test_keys_survive_restart_are_capped_and_survive_a_same_circuit_refit(start_anonymizer, tmp_path):
    model_dir = tmp_path / "model"
    # live keys are never evicted (KEY_LIVE_SECONDS, tested in test_key_ownership): off here
    environment = {"MAX_KEYS_PER_OWNER": "2", "KEY_LIVE_SECONDS": "0"}
    server = start_anonymizer(model_dir=model_dir, **environment)
    assert requests.post(server.url + "/fit").status_code == 201
    client = quiet_party(server.url, tmp_path / "party")
    first_key = client.key_id()
    row = random_rows(1, seed=35)[0]
    values = by_party(client.info().parties, row)
    client.stage("bank", client.encrypt("bank", values["bank"]))

    server.stop()
    server = start_anonymizer(model_dir=model_dir, **environment)
    client.server_url = server.url
    label, _ = client.score({p: v for p, v in values.items() if p != "bank"})  # bank was staged
    assert label == plaintext_labels(server, row[None])[0]

    evaluation_keys = client.codec().evaluation_keys()
    newer = [requests.post(server.url + "/fhe/keys", data=evaluation_keys).json()["key_id"] for _ in range(2)]
    ciphertext = client.encrypt("bank", values["bank"])
    stage = lambda key: requests.put(f"{server.url}/fhe/keys/{key}/inputs/bank", data=ciphertext)
    assert stage(first_key).status_code == 404  # evicted: least recently used of three, two per owner
    assert stage(newer[1]).status_code == 201
    assert len([p for p in (model_dir / "keys").iterdir() if not p.name.startswith(".")]) == 2

    # the same data and parameters: the same circuit, so the keys stay (another one: test_refit_keys)
    assert requests.post(server.url + "/fit").status_code == 201
    assert stage(newer[1]).status_code == 201
    ciphertext = client.encrypt("applicant", values["applicant"])
    parts = multipart(newer[1], applicant=ciphertext)
    parts["credit_bureau"] = ("credit_bureau", client.encrypt("credit_bureau", values["credit_bureau"]))
    response = requests.post(server.url + "/predict", files=parts)
    assert response.status_code == 201, response.text
    assert client.decrypt(response.content)[0] == plaintext_labels(server, row[None])[0]


@pytest.mark.parametrize(
    "layout", ["one data holder, a tree", "three parties, selected", "three parties, additive"]
)
def test_protocol_example_runs_as_written(layout, start_anonymizer, fitted_anonymizer):
    if layout.startswith("one data holder"):  # what AnoMed runs: no ANONYMIZER_PARTIES
        server = start_anonymizer(ANONYMIZER_PARTIES="", FEATURE_NAMES="")
    elif layout.endswith("additive"):
        server = start_anonymizer(TREE_ADDITIVE="1", TREE_N_BITS="4")
    else:
        server = fitted_anonymizer
    if server is not fitted_anonymizer:
        assert requests.post(server.url + "/fit", timeout=300).status_code == 201
    row = random_rows(1, seed=37)[0].tolist()
    output = run_protocol_example(server.url, row)
    assert output["row"] == pytest.approx(row)
    assert output["decision"] == plaintext_labels(server, np.array([row]))[0]
    assert sum(output["probabilities"]) == pytest.approx(1.0, abs=0.02)  # quantized outputs


def test_explain_finds_the_nearest_approving_value_with_encrypted_predictions(fitted_anonymizer, party):
    info = party.info()
    column = info.feature_names.index("years_employed")
    X = random_rows(300, seed=36)
    X[:, column] = 0.0
    denied = X[plaintext_labels(fitted_anonymizer, X) == 0]
    levels = np.array(party.codec().other_levels(column, 0.0))  # one value per other level
    for row in denied:  # the first denied applicant whom some years of employment would approve
        variants = np.repeat(row[None], len(levels), axis=0)
        variants[:, column] = levels
        approved = plaintext_labels(fitted_anonymizer, variants) == 1
        if approved.any():
            break
    else:
        pytest.skip("no denied applicant in the sample can be approved through years_employed")
    order = np.argsort(np.abs(levels - row[column]), kind="stable")
    expected = next(levels[i] for i in order if approved[i])
    result = party.explain(by_party(info.parties, row), "credit_bureau", "years_employed")
    assert result["decision"] == 0
    assert result["value"] == pytest.approx(expected)
    assert result["change"] == pytest.approx(expected - row[column])
