"""MODEL_DIR on a small tmpfs filled to the last byte: every write path (a fit, the generated model
key, key uploads, staging) answers 507 naming the problem, leaves no half-written file, keeps the
served model and the staged inputs, and everything works again once space returns."""

import os
import subprocess
import uuid

import pytest
import requests
from helpers import multipart, plaintext_labels, quiet_party, random_rows
from inprocess import InProcessServer, config_for


@pytest.fixture
def small_disk(tmp_path):
    """A 160 MB tmpfs (root only): writes past its size fail with ENOSPC, as on a full volume."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mountpoint)])
    if result.returncode != 0:
        pytest.skip("this machine refuses to mount a tmpfs")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)])


def fill(disk) -> object:
    """Take every free byte of `disk`; returns the filler file (delete it to free the space)."""
    filler = disk / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb", buffering=0) as file:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    file.write(b"\0" * chunk)
            except OSError:
                continue
    return filler


def hidden_files(model_dir) -> list:
    """Temporary files a reader must never see (taken-aside staged inputs are private state)."""
    return [p for p in model_dir.rglob(".*") if p.name.startswith((".staging-", ".current-", ".model.key-"))]


def assert_507(response, what: str) -> None:
    assert response.status_code == 507, response.text
    assert "No space left" in response.json()["description"] and what in response.json()["description"]


def test_a_full_disk_answers_507_on_every_write_and_loses_nothing(small_disk, stub, tmp_path):
    model_dir = small_disk / "model"
    row = random_rows(1, seed=91)[0]
    with InProcessServer(config_for(model_dir, stub)) as server:
        assert requests.post(server.url + "/fit", timeout=300).status_code == 201
        served = requests.get(server.url + "/").json()["model_version"]
        applicant = quiet_party(server.url, tmp_path / "applicant", keys_dir=tmp_path / "keys")
        bank = quiet_party(server.url, tmp_path / "bank", keys_dir=tmp_path / "keys")
        parties = applicant.info().parties
        values = {party: row[columns].tolist() for party, columns in parties.items()}
        key_id = applicant.key_id()
        bank.stage("bank", bank.encrypt("bank", values["bank"]))
        evaluation_keys = applicant.codec().evaluation_keys()
        ciphertexts = {p: applicant.encrypt(p, values[p]) for p in ("applicant", "credit_bureau")}
        expected = plaintext_labels(server, row[None])[0]

        filler = fill(small_disk)
        assert_507(requests.post(server.url + "/fhe/keys", data=evaluation_keys), "evaluation key")
        assert_507(
            requests.put(f"{server.url}/fhe/keys/{key_id}/inputs/bank", data=b"x" * 4096), "staged input"
        )
        assert_507(requests.post(server.url + "/fit", timeout=300), "model version")
        assert requests.get(server.url + "/").json()["model_version"] == served
        assert plaintext_labels(server, row[None])[0] == expected
        assert not hidden_files(model_dir)
        # a failed prediction on a full disk gives the staged input back; a good one consumes it
        bad = multipart(key_id, applicant=b"not a ciphertext", credit_bureau=ciphertexts["credit_bureau"])
        assert requests.post(server.url + "/predict", files=bad).status_code == 400
        good = requests.post(server.url + "/predict", files=multipart(key_id, **ciphertexts))
        assert good.status_code == 201, good.text
        assert applicant.decrypt(good.content)[0] == expected

        filler.unlink()  # space returns: every write path works again
        assert requests.post(server.url + "/fit", timeout=300).status_code == 201
        assert requests.get(server.url + "/").json()["model_version"] != served
        bank.stage("bank", bank.encrypt("bank", values["bank"]))
        assert applicant.score({p: values[p] for p in ("applicant", "credit_bureau")})[0] == expected
        assert requests.post(server.url + "/fhe/keys", data=evaluation_keys).status_code == 201


def stored_versions(model_dir) -> set[str]:
    return {p.name for p in (model_dir / "versions").iterdir() if not p.name.startswith(".")}


def test_a_fit_on_a_full_disk_makes_room_from_versions_no_longer_served(small_disk, stub):
    model_dir = small_disk / "model"
    with InProcessServer(config_for(model_dir, stub)) as server:
        for _ in range(3):  # KEEP_VERSIONS: the served one and two older ones
            assert requests.post(server.url + "/fit", timeout=300).status_code == 201
        served = requests.get(server.url + "/").json()["model_version"]
        before = stored_versions(model_dir)
        filler = fill(small_disk)
        response = requests.post(server.url + "/fit", timeout=300)  # the older versions make room
        assert response.status_code == 201, response.text
        versions = stored_versions(model_dir)
        # by set, not by name: versions fitted within one second share their timestamp prefix
        assert len(versions) == 2 and served in versions and len(versions - before) == 1
        filler.unlink()


def test_a_generated_model_key_is_never_left_empty_by_a_full_disk(small_disk, stub):
    model_dir = small_disk / "model"
    model_dir.mkdir()
    filler = fill(small_disk)
    with InProcessServer(config_for(model_dir, stub)) as server:
        assert_507(requests.post(server.url + "/fit", timeout=300), "model")
        assert not (model_dir / "model.key").exists() and not hidden_files(model_dir)
        assert requests.get(server.url + "/").status_code == 200
        filler.unlink()
        assert requests.post(server.url + "/fit", timeout=300).status_code == 201
        assert len((model_dir / "model.key").read_bytes().strip()) == 44
