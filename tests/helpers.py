"""Test helpers in one place: the stub's layouts, fresh applicants, and the HTTP calls tests repeat."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import anomed_utils as utils
import numpy as np
import requests

from anonymizer.party import PartyClient
from challenge_stub.dataset import FEATURE_NAMES, PARTY_LAYOUT, make_credit_data
from devtools.launch import ROOT

STUB_ROWS = 3000
# the stub's three parties, as an operator of the credit deployment configures them
CREDIT_ENV = {"ANONYMIZER_PARTIES": json.dumps(PARTY_LAYOUT), "FEATURE_NAMES": json.dumps(FEATURE_NAMES)}
TWO_PARTY_LAYOUT = {"applicant": [0, 2, 4, 5, 6, 7, 8, 9, 10, 11, 14], "bank": [1, 3, 12, 13]}


def random_rows(n: int, seed: int) -> np.ndarray:
    """Fresh applicants from the same distribution (not in the stub's data)."""
    return make_credit_data(n, seed=seed)[0]


def post_npz(server, X, timeout: float | None = None, **params) -> requests.Response:
    """Plaintext `POST /predict` of the rows X to `server` (anything with a `.url`)."""
    body = utils.named_ndarrays_to_bytes({"X": X})
    return requests.post(server.url + "/predict", data=body, params=params, timeout=timeout)


def plaintext_labels(server, X, **params) -> np.ndarray:
    """What plaintext `/predict` of `server` answers for the rows X (asserting a 201)."""
    response = post_npz(server, X, **params)
    assert response.status_code == 201, response.text
    return utils.bytes_to_named_ndarrays(response.content)["prediction"]


def multipart(key_id: str, model_version: str | None = None, **ciphertexts) -> dict:
    """The `files=` of an encrypted `POST /predict`: the key id, the version, party ciphertexts."""
    parts = {"key_id": (None, key_id)}
    if model_version is not None:
        parts["model_version"] = (None, model_version)
    parts.update({name: (name, data, "application/octet-stream") for name, data in ciphertexts.items()})
    return parts


def by_party(row: np.ndarray) -> dict:
    """One row of the stub's columns as each party's values."""
    return {party: row[columns].tolist() for party, columns in PARTY_LAYOUT.items()}


def paillier_parties(url: str, workdir: Path) -> tuple[PartyClient, PartyClient, PartyClient]:
    """(applicant, bank, bureau) of a Paillier server: the applicant's keys, and the co-parties
    joined to them by key id and fingerprint."""
    applicant = quiet_party(url, workdir / "applicant")
    key_id, fingerprint = applicant.key_id(), applicant.key_fingerprint()
    bank, bureau = quiet_party(url, workdir / "bank"), quiet_party(url, workdir / "bureau")
    bank.join(key_id, fingerprint)
    bureau.join(key_id, fingerprint)
    return applicant, bank, bureau


def stage_as_cli_processes(url: str, workdir: Path, applicant: PartyClient, values: dict) -> None:
    """Each co-party in `values` stages its part as its own CLI process (Paillier: joining the
    applicant's key by id and read-out fingerprint), and keeps no private key."""
    from anonymizer.party.client import readable_fingerprint

    key_id = applicant.key_id()
    readable = readable_fingerprint(applicant.key_fingerprint())  # as the applicant reads it out
    for party, party_values in values.items():
        command = [sys.executable, "-m", "anonymizer.party", "--server", url]
        command += ["--workdir", str(workdir / party), "--key-id", key_id, "--fingerprint", readable]
        command += ["stage", "--party", party, "--values", json.dumps(party_values)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert not list((workdir / party).rglob("paillier-private.json"))


def quiet_party(url: str, workdir: Path, **options) -> PartyClient:
    """A PartyClient that logs nothing (options: keys_dir, token, busy_retries)."""
    return PartyClient(url, workdir, log=lambda message: None, **options)


def protocol_example() -> str:
    """The runnable protocol block of docs/protocol.md, as a party would copy it."""
    page = (ROOT / "docs" / "protocol.md").read_text()
    return re.search(r"<!-- protocol-example -->\n```python\n(.*?)```", page, re.S).group(1)


def paillier_example() -> str:
    """The runnable Paillier block of docs/protocol.md, as a party would copy it."""
    page = (ROOT / "docs" / "protocol.md").read_text()
    return re.search(r"<!-- paillier-example -->\n```python\n(.*?)```", page, re.S).group(1)


def run_paillier_example(
    url: str, row: list[float], role: str, home: Path, key_id: str = "", fingerprint: str = ""
) -> dict:
    """One party's process of the Paillier block; its last line of output (JSON). A co-party
    gets the applicant's key id and fingerprint (from the applicant-keys run's output)."""
    env = {**os.environ, "ANONYMIZER_URL": url, "ANONYMIZER_ROW": json.dumps(row), "PARTY_ROLE": role}
    env.update(PARTY_HOME=str(home), KEY_ID=key_id, KEY_FINGERPRINT=fingerprint)
    env["PYTHONPATH"] = str(
        ROOT
    )  # the party package (its proofs module), as `pip install '.[party]'` gives it
    result = subprocess.run(
        [sys.executable, "-c", paillier_example()],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_protocol_example(url: str, row: list[float]) -> dict:
    """Run the protocol block as written against `url` on `row`; its last line of output (JSON)."""
    result = subprocess.run(
        [sys.executable, "-c", protocol_example()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "ANONYMIZER_URL": url, "ANONYMIZER_ROW": json.dumps(row)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
