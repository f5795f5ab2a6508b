"""Evaluation keys belong to their uploader: bearer tokens, per-owner quotas with LRU eviction,
per-address quotas without tokens, a global cap that answers 429 instead of evicting strangers."""

import dataclasses
import shutil
import time

import anomed_utils as utils
import pytest
import requests
from helpers import plaintext_labels, quiet_party, random_rows
from inprocess import InProcessServer, config_for

from anonymizer.party import PartyClient, ProtocolError
from anonymizer.settings import KeyQuota
from anonymizer.tokens import PartyTokens

TOKENS = {"applicant": "a" * 24, "bank": "b" * 24, "bureau": "c" * 24}


def bearer(name: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


@pytest.fixture(scope="module")
def evaluation_keys(fitted_template, tmp_path_factory, stub):
    """Serialized evaluation keys for the template's model (keygen once)."""
    model_dir = tmp_path_factory.mktemp("keys-model") / "model"
    shutil.copytree(fitted_template, model_dir)
    with InProcessServer(config_for(model_dir, stub)) as server:
        party = PartyClient(server.url, tmp_path_factory.mktemp("keys-party"), log=lambda m: None)
        party.keygen()
        return party.codec().evaluation_keys()


def serve(model_dir, stub, tokens=None, **quota):
    config = dataclasses.replace(
        config_for(model_dir, stub),
        party_tokens=PartyTokens(tokens) if tokens else None,
        key_quota=KeyQuota(**quota),
    )
    return InProcessServer(config)


def upload(url, body, headers=None) -> requests.Response:
    return requests.post(url + "/fhe/keys", data=body, headers=headers or {})


def usable(url, key_id, headers=None) -> bool:
    response = requests.put(f"{url}/fhe/keys/{key_id}/inputs/bank", data=b"c", headers=headers or {})
    return response.status_code != 404


def exists(url, key_id) -> bool:
    """Whether the server still has the key, without using it (a prediction missing inputs: 400)."""
    parts = {"key_id": (None, key_id), "applicant": ("applicant", b"x", "application/octet-stream")}
    return requests.post(url + "/predict", files=parts).status_code != 404


def test_tokens_guard_the_encrypted_protocol_and_leave_anomed_routes_open(model_dir, stub, tmp_path):
    with serve(model_dir, stub, TOKENS) as server:
        for method, route in [
            ("get", "/fhe/info"),
            ("get", "/fhe/specs"),
            ("post", "/fhe/keys"),
            ("put", "/fhe/keys/x/inputs/bank"),
        ]:
            for headers in [
                {},
                {"Authorization": "Bearer wrong-token-wrong-token"},
                {"Authorization": "Basic x"},
            ]:
                response = getattr(requests, method)(server.url + route, headers=headers, data=b"k")
                assert response.status_code == 401, (route, response.text)
                assert response.json()["description"] and "Bearer" in response.headers["WWW-Authenticate"]
        multipart = {"key_id": (None, "x" * 22)}
        assert requests.post(server.url + "/predict", files=multipart).status_code == 401
        assert requests.get(server.url + "/").status_code == 200
        X = random_rows(2, seed=71)
        body = utils.named_ndarrays_to_bytes({"X": X})
        assert requests.post(server.url + "/predict", data=body).status_code == 201  # attackers' route

        applicant = quiet_party(server.url, tmp_path / "a", token=TOKENS["applicant"])
        bank = quiet_party(server.url, tmp_path / "a", token=TOKENS["bank"])
        row = random_rows(1, seed=72)[0]
        values = {p: row[c].tolist() for p, c in applicant.info().parties.items()}
        key_id = applicant.key_id()
        bank.stage("bank", bank.encrypt("bank", values["bank"]))  # co-parties stage into it
        with pytest.raises(ProtocolError, match="403"):
            bank.predict({"applicant": bank.encrypt("applicant", values["applicant"])})
        label, _ = applicant.score(
            {"applicant": values["applicant"], "credit_bureau": values["credit_bureau"]}
        )
        assert label == plaintext_labels(server, row[None])[0]
        assert usable(server.url, key_id, bearer("applicant"))


def test_an_owner_evicts_only_its_own_least_recently_used_keys(model_dir, stub, evaluation_keys):
    with serve(model_dir, stub, TOKENS, keys_per_owner=2, live_seconds=0) as server:
        bank_key = upload(server.url, evaluation_keys, bearer("bank")).json()["key_id"]
        first, second = (
            upload(server.url, evaluation_keys, bearer("applicant")).json()["key_id"] for _ in range(2)
        )
        for _ in range(4):  # a stranger uploading many keys flushes nothing of anyone else's
            assert upload(server.url, evaluation_keys, bearer("bureau")).status_code == 201
        assert all(usable(server.url, k, bearer("bank")) for k in (bank_key, first, second))
        assert usable(server.url, first, bearer("bank"))  # `first` used: `second` is now the LRU
        third = upload(server.url, evaluation_keys, bearer("applicant")).json()["key_id"]
        assert usable(server.url, first, bearer("bank")) and usable(server.url, third, bearer("bank"))
        assert not usable(server.url, second, bearer("bank"))


def test_a_key_in_use_is_never_the_eviction_victim(model_dir, stub, evaluation_keys):
    # one NAT's applicants share an owner: a new upload must not break another's decision
    with serve(model_dir, stub, keys_per_owner=2, live_seconds=4.0) as server:
        first, second = (upload(server.url, evaluation_keys).json()["key_id"] for _ in range(2))
        response = upload(server.url, evaluation_keys)  # both uploaded within 4 s: in use
        assert response.status_code == 429, response.text
        assert 1 <= int(response.headers["Retry-After"]) <= 5 and "in use" in response.json()["description"]
        assert exists(server.url, first) and exists(server.url, second)
        time.sleep(2.5)
        assert usable(server.url, first)  # a co-party stages into `first`: its decision is under way
        time.sleep(2.0)  # `second` unused for 4.5 s now, `first` for 2
        third = upload(server.url, evaluation_keys)
        assert third.status_code == 201, third.text
        assert exists(server.url, first) and not exists(server.url, second)


def test_without_tokens_quotas_are_per_client_address(model_dir, stub, evaluation_keys):
    with serve(model_dir, stub, keys_per_owner=2, live_seconds=0) as server:

        def from_address(address):  # as our nginx forwards it to the loopback app
            return {"X-Forwarded-For": address}

        mine = [
            upload(server.url, evaluation_keys, from_address("10.0.0.1")).json()["key_id"] for _ in range(2)
        ]
        for _ in range(5):
            assert upload(server.url, evaluation_keys, from_address("10.0.0.2")).status_code == 201
        assert all(usable(server.url, k) for k in mine)


def test_a_full_registry_answers_429_until_keys_go_idle(model_dir, stub, evaluation_keys):
    size = len(evaluation_keys)
    with serve(model_dir, stub, TOKENS, total_keys=2, idle_seconds=8.0) as server:
        kept = [
            upload(server.url, evaluation_keys, bearer(n)).json()["key_id"] for n in ("applicant", "bank")
        ]
        response = upload(server.url, evaluation_keys, bearer("bureau"))
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1 and response.json()["description"]
        assert all(usable(server.url, k, bearer("bank")) for k in kept)
        time.sleep(8.5)  # both idle now (uploads include deserializing): the LRU one makes room
        assert upload(server.url, evaluation_keys, bearer("bureau")).status_code == 201
        assert [usable(server.url, k, bearer("bank")) for k in kept] == [False, True]  # LRU went
    with serve(model_dir, stub, TOKENS, bytes_per_owner=size - 1) as server:
        response = upload(server.url, evaluation_keys, bearer("bank"))
        assert response.status_code == 413 and response.json()["description"]


def test_party_tokens_are_read_from_env_or_file(tmp_path):
    file = tmp_path / "tokens.json"
    file.write_text('{"bank": "0123456789abcdef0123"}')
    tokens = PartyTokens.from_env({"ANONYMIZER_PARTY_TOKENS_FILE": str(file)})
    assert tokens.owner("0123456789abcdef0123").startswith("token:")
    assert tokens.owner("0123456789abcdef0124") is None
    listed = PartyTokens.from_env({"ANONYMIZER_PARTY_TOKENS": "x" * 16 + ", " + "y" * 16})
    assert listed.owner("y" * 16) and listed.owner("x" * 16) != listed.owner("y" * 16)
    assert PartyTokens.from_env({}) is None
    with pytest.raises(ValueError, match="16 characters"):
        PartyTokens.parse("short")


def test_an_admin_token_guards_fit_and_evaluate_and_nothing_else(model_dir, stub):
    from anonymizer.config import Config
    from anonymizer.tokens import AdminToken

    admin = "operator-" + "x" * 16
    config = dataclasses.replace(config_for(model_dir, stub), admin_token=AdminToken(admin))
    with InProcessServer(config) as server:
        for route in ("/fit", "/evaluate?data_split=tuning"):
            for headers in ({}, {"Authorization": "Bearer " + "y" * 25}, bearer("applicant")):
                answer = requests.post(server.url + route, headers=headers, timeout=60)
                assert answer.status_code == 401 and "admin token" in answer.json()["description"]
        evaluated = requests.post(
            server.url + "/evaluate?data_split=tuning",
            headers={"Authorization": f"Bearer {admin}"},
            timeout=120,
        )
        assert evaluated.status_code == 201
        assert requests.get(server.url + "/").status_code == 200  # AnoMed's other routes stay open
        X = random_rows(3, seed=71)
        assert len(plaintext_labels(server, X)) == 3
    assert Config.from_env({}).admin_token is None  # off by default: AnoMed calls /fit bare
    with pytest.raises(ValueError, match="16 characters"):
        AdminToken("short")
