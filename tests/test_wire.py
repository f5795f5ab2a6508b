"""The wire contract (anonymizer/wire.py): every error body carries a machine-readable `code`,
the specific one where clients act on it, and the SDK raises with it; a claim and a decision are
typed values; the `/fhe/info` document is one typed value, built once and checked by the SDK."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anomed_utils as utils
import pytest
import requests
from helpers import multipart, quiet_party
from inprocess import InProcessServer, config_for

from anonymizer.party import ProtocolError
from anonymizer.wire import (
    Claim,
    Decision,
    ErrorCode,
    FheInfo,
    MalformedInfo,
    code_for_status,
    parse_code,
    percent,
)


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


def test_the_served_info_is_one_typed_document(served):
    document = requests.get(served.url + "/fhe/info", timeout=30).json()
    info = FheInfo.from_document(document)
    assert info.to_document() == document  # nothing lost or added on the way
    assert info.applicant == next(iter(document["parties"])) and not info.blinded
    assert FheInfo.from_document({**document, "added_by_a_newer_server": 1}) == info


GOOD = {
    "model_version": "v",
    "scheme": "tfhe",
    "engine": "thermometer",
    "parties": {"a": [0, 1], "b": [2]},
    "n_features": 3,
    "classes": [0, 1],
    "keys_digest": "d",
}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"parties": None}, "parties"),
        ({"parties": {"a": [0, 1], "b": [1]}}, "parties"),  # a column owned twice
        ({"parties": {"a": [0, 1], "b": [3]}}, "parties"),  # past the features
        ({"parties": {"a": [0, 1, 2], "b": []}}, "parties"),
        ({"n_features": "3"}, "n_features"),
        ({"classes": [0]}, "classes"),
        ({"feature_names": [1, 2, 3]}, "feature_names"),
        ({"model_version": None}, "model_version"),
        ({"functions": {"decide": 1}}, "functions"),
        ({"encoding": {"a": {"columns": [0, 1], "edges": [[0.5], [1.5]]}}}, "encoding"),  # b missing
        (
            {"encoding": {"a": {"columns": [0], "edges": [[0.5]]}, "b": {"columns": [2], "edges": [[1]]}}},
            "encoding",
        ),
        (
            {
                "encoding": {
                    "a": {"columns": [0, 1], "edges": [[0.5], ["x"]]},
                    "b": {"columns": [2], "edges": [[1]]},
                }
            },
            "encoding",
        ),
        ({"reasons": {"columns": [0, 3]}}, "reasons"),
        ({"reasons": {"columns": [0, 2], "radices": [2, 3], "groups": [[0]]}}, "reasons"),  # not a partition
        ({"reasons": {"columns": [0, 2], "radices": [2], "groups": [[0], [1]]}}, "reasons"),
        ({"decoding": [1]}, "decoding"),
    ],
)
def test_a_malformed_info_names_its_field(change, field):
    encoding = {"a": {"columns": [0, 1], "edges": [[0.5], [1.5, 2]]}, "b": {"columns": [2], "edges": [[1]]}}
    FheInfo.from_document(
        {**GOOD, "encoding": encoding, "reasons": {"columns": [0, 2]}, "functions": {"decide": None}}
    )
    packed = {"columns": [0, 2], "radices": [2, 3], "groups": [[0, 1]]}
    FheInfo.from_document({**GOOD, "encoding": encoding, "reasons": packed, "functions": {"decide": None}})
    with pytest.raises(MalformedInfo, match=repr(field)):
        FheInfo.from_document({**GOOD, **change})
    missing = {k: v for k, v in GOOD.items() if k != "keys_digest"}
    with pytest.raises(MalformedInfo, match="'keys_digest'"):
        FheInfo.from_document(missing)


def test_the_sdk_refuses_a_server_whose_info_it_cannot_read(tmp_path):
    lying = {**GOOD, "parties": {"a": [0, 1], "b": [1]}}

    class Liar(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(lying).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Liar)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        party = quiet_party(f"http://127.0.0.1:{server.server_port}", tmp_path / "party")
        with pytest.raises(ProtocolError, match="unusable.*'parties'"):
            party.encrypt("a", [1.0, 2.0])
        assert not (tmp_path / "party").exists() or not any((tmp_path / "party").rglob("*"))
    finally:
        server.shutdown()
        server.server_close()
