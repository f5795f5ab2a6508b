"""The wire contract (anonymizer/wire.py): every error body carries a machine-readable `code`,
the specific one where clients act on it, and the SDK raises with it; a claim and a decision are
typed values."""

import anomed_utils as utils
import pytest
import requests
from helpers import multipart, quiet_party
from inprocess import InProcessServer, config_for

from anonymizer.party import ProtocolError
from anonymizer.wire import Claim, Decision, ErrorCode, code_for_status, parse_code, percent


def test_codes_by_status_and_parsing():
    assert code_for_status(413) == ErrorCode.TOO_LARGE and code_for_status(418) == ErrorCode.ERROR
    assert parse_code("unknown_key") == ErrorCode.UNKNOWN_KEY
    assert parse_code("something_newer") is None and parse_code(None) is None


def test_claim_and_decision_values():
    assert Claim("v1").params() == {"model_version": "v1"}
    assert Claim("v1", "d").params() == {"model_version": "v1", "keys_digest": "d"}
    label, probability = Decision(1, None)
    assert (label, probability) == (1, None) and percent(probability) == "—"
    assert percent(0.7354) == "73.5 %"


@pytest.fixture
def served(model_dir, stub):
    with InProcessServer(config_for(model_dir, stub)) as server:
        yield server


def test_every_refusal_carries_a_known_code(served):
    url = served.url
    bomb = utils.named_ndarrays_to_bytes({"Y": [1.0]})
    refusals = {
        "not_found": requests.get(url + "/nothing", timeout=30),
        "method_not_allowed": requests.delete(url + "/predict", timeout=30),
        "bad_request": requests.post(url + "/predict", data=bomb, timeout=30),
        "unknown_key": requests.post(url + "/predict", files=multipart("0" * 32), timeout=30),
        "bad_keys": requests.post(url + "/fhe/keys", data=b"not a key", timeout=30),
        "model_changed": requests.post(url + "/fhe/keys?model_version=old", data=b"k", timeout=30),
        "too_large": requests.post(url + "/fhe/keys", data=bytes(300 * 1024 * 1024 + 1), timeout=120),
    }
    for expected, response in refusals.items():
        assert 400 <= response.status_code < 500, (expected, response.status_code)
        body = response.json()
        assert body["code"] == expected and parse_code(body["code"]) is not None, (expected, body)
        assert body["title"]  # for people, beside the code


def test_the_sdk_raises_with_the_servers_code(served, tmp_path):
    party = quiet_party(served.url, tmp_path / "party")
    party.keygen()
    with pytest.raises(ProtocolError) as refused:
        party.predict({})  # no party's ciphertext sent or staged
    assert refused.value.status == 400 and refused.value.code == ErrorCode.MISSING_INPUT
