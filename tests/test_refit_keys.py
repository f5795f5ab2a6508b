"""A refit keeps every party's keys when the new circuit accepts them (same client specs and
encoding: the keys digest), also for a job already on its way to an executor; otherwise the 409
says so and the SDK makes new keys by itself."""

import dataclasses

import pytest
import requests
from helpers import multipart, plaintext_labels, quiet_party, random_rows
from inprocess import InProcessServer, config_for

from anonymizer.engines.base import DECIDE
from anonymizer.execution.base import Job, StaleJob
from anonymizer.execution.runner import JobRunner, RunnerSettings
from anonymizer.party import ModelChanged
from anonymizer.settings import ModelSpec
from anonymizer.wire import Claim


def by_party(parties: dict, row) -> dict:
    return {party: row[columns].tolist() for party, columns in parties.items()}


def fit(server) -> dict:
    response = requests.post(server.url + "/fit", timeout=300)
    assert response.status_code == 201, response.text
    return requests.get(server.url + "/fhe/info").json()


def test_a_refit_to_the_same_circuit_keeps_keys_and_staged_inputs(model_dir, stub, tmp_path):
    row = random_rows(1, seed=81)[0]
    with InProcessServer(config_for(model_dir, stub)) as server:
        applicant = quiet_party(server.url, tmp_path / "applicant", keys_dir=tmp_path / "keys")
        bank = quiet_party(server.url, tmp_path / "bank", keys_dir=tmp_path / "keys")
        before = applicant.info().to_document()
        values = by_party(before["parties"], row)
        key_id = applicant.key_id()
        bank.stage("bank", bank.encrypt("bank", values["bank"]))
        ciphertext = applicant.encrypt("applicant", values["applicant"])

        after = fit(server)  # the same data and parameters
        assert after["model_version"] != before["model_version"]
        assert after["keys_digest"] == before["keys_digest"]
        # the old version's ciphertexts, claimed as such, with the staged input made before the refit
        parts = multipart(key_id, before["model_version"], applicant=ciphertext)
        parts["credit_bureau"] = (
            "credit_bureau",
            applicant.encrypt("credit_bureau", values["credit_bureau"]),
        )
        response = requests.post(server.url + "/predict", files=parts)
        assert response.status_code == 201, response.text
        assert response.headers["X-Model-Version"] == after["model_version"]
        label, _ = applicant.decrypt(response.content)
        assert label == plaintext_labels(server, row[None])[0]
        # an SDK that still holds the old version's view follows the refit without a new key
        bank.stage("bank", bank.encrypt("bank", values["bank"]))
        assert bank.known_key_id() == key_id
        assert bank.info(refresh=True).model_version == after["model_version"]  # as a 409 makes it
        assert bank.decrypt(response.content)[0] == label  # with the keys kept for the new version
        label, _ = applicant.score({p: v for p, v in values.items() if p != "bank"})
        assert label == plaintext_labels(server, row[None])[0]
        assert applicant.known_key_id() == key_id
        # a job checked against the old version reaches an executor after the refit: it still runs
        runner = JobRunner(RunnerSettings(model_dir))
        ordered = [applicant.encrypt(name, values[name]) for name in before["parties"]]
        claimed = Claim(before["model_version"], before["keys_digest"])
        result = runner.run(Job(key_id, claimed, ordered, DECIDE))
        assert applicant.decrypt(result)[0] == plaintext_labels(server, row[None])[0]
        for other_digest in ("", "0" * 64):  # unless the successor needs other keys
            with pytest.raises(StaleJob):
                runner.run(Job(key_id, Claim(before["model_version"], other_digest), ordered, DECIDE))


def test_a_refit_to_another_circuit_answers_409_and_the_sdk_rekeys(model_dir, stub, tmp_path):
    row = random_rows(1, seed=82)[0]
    config = config_for(model_dir, stub)
    with InProcessServer(config) as server:
        applicant = quiet_party(server.url, tmp_path / "applicant")
        values = by_party(applicant.info().parties, row)
        old_key = applicant.key_id()
        old_ciphertext = applicant.encrypt("applicant", values["applicant"])
        before = applicant.info().to_document()
        relying = quiet_party(server.url, tmp_path / "relying")  # on a bank that staged for its old key
        relying.stage("bank", relying.encrypt("bank", values["bank"]))
    deeper = dataclasses.replace(config, tree=ModelSpec(max_depth=5, min_samples_leaf=10, n_bits=4))
    with InProcessServer(deeper) as server:
        applicant.server_url = server.url
        after = fit(server)
        assert after["keys_digest"] != before["keys_digest"]
        stage = requests.put(f"{server.url}/fhe/keys/{old_key}/inputs/bank", data=b"c")
        assert stage.status_code == 409
        assert "needs new keys" in stage.json()["description"]
        relying.server_url = server.url
        with pytest.raises(ModelChanged, match="must encrypt and stage again"):  # re-keyed itself
            relying.score({p: v for p, v in values.items() if p != "bank"})
        with pytest.raises(ModelChanged, match="encrypt again"):  # raw ciphertexts cannot be redone
            applicant.predict({"applicant": old_ciphertext})
        label, _ = applicant.score(values)  # values can: new keys, uploaded, encrypted again
        assert label == plaintext_labels(server, row[None])[0]
        assert applicant.known_key_id() != old_key
