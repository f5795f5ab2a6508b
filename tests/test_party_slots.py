"""Issue 32: a party's slot is bound to the token named like it. The applicant (the key owner, who
decrypts the answer) must not fill a co-party's slot with values of its choosing, staged or sent
inline, to probe the model or the co-party; tokens named otherwise stay unbound, as before."""

import json
import shutil

import pytest
import requests
from helpers import multipart, plaintext_labels, quiet_party, random_rows

from anonymizer.party import ProtocolError
from anonymizer.tokens import PartyTokens
from anonymizer.wire import ErrorCode
from challenge_stub.dataset import PARTY_LAYOUT

PAILLIER_ENV = {"ANONYMIZER_ENCRYPTION": "paillier", "TREE_ADDITIVE": "1", "ADDITIVE_C": "0.01"}
# "bureau" is no party's name (the layout's is credit_bureau): that token binds no slot
TOKENS = {"applicant": "a" * 24, "bank": "b" * 24, "bureau": "c" * 24}
NOT_THEIRS = "Not this party's slot"


def bearer(name: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


@pytest.fixture
def serve(paillier_template, start_anonymizer, tmp_path):
    def start(tokens: str):
        model_dir = tmp_path / "model"
        shutil.copytree(paillier_template, model_dir)
        return start_anonymizer(model_dir=model_dir, ANONYMIZER_PARTY_TOKENS=tokens, **PAILLIER_ENV)

    return start


def values_of(row) -> dict:
    return {party: row[columns].tolist() for party, columns in PARTY_LAYOUT.items()}


def parties(url, tmp_path):
    """The applicant (uploads the key) and its co-parties (join it), each with its own token."""
    applicant = quiet_party(url, tmp_path / "applicant", token=TOKENS["applicant"], busy_retries=0)
    key_id = applicant.key_id()
    bank = quiet_party(url, tmp_path / "bank", token=TOKENS["bank"])
    bureau = quiet_party(url, tmp_path / "bureau", token=TOKENS["bureau"])
    for co_party in (bank, bureau):
        co_party.join(key_id, applicant.key_fingerprint())
    return applicant, bank, bureau, key_id


def assert_not_theirs(response, party: str) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert (
        body["code"] == "not_your_slot" and body["title"] == NOT_THEIRS and repr(party) in body["description"]
    )


def test_only_the_banks_token_stages_the_banks_slot(serve, tmp_path):
    server = serve(json.dumps(TOKENS))
    applicant, bank, bureau, key_id = parties(server.url, tmp_path)
    row = random_rows(1, seed=331)[0]
    values = values_of(row)
    staged = f"{server.url}/fhe/keys/{key_id}/inputs"

    # the applicant stages bank columns of its choosing: refused, and nothing is stored
    forged = applicant.encrypt("bank", [0.0] * len(values["bank"]))
    assert_not_theirs(requests.put(f"{staged}/bank", data=forged, headers=bearer("applicant")), "bank")
    with pytest.raises(ProtocolError, match="403") as refused:
        applicant.stage("bank", forged)
    assert refused.value.code == ErrorCode.NOT_YOUR_SLOT
    bureau.stage("credit_bureau", bureau.encrypt("credit_bureau", values["credit_bureau"]))
    with pytest.raises(ProtocolError, match="400") as missing:
        applicant.score({"applicant": values["applicant"]})  # the bank's slot stayed empty
    assert missing.value.code == ErrorCode.MISSING_INPUT and "bank" in str(missing.value)

    # nor does the bank (or an unbound token) write the applicant's slot
    own = bank.encrypt("applicant", values["applicant"])
    assert_not_theirs(requests.put(f"{staged}/applicant", data=own, headers=bearer("bank")), "applicant")
    assert_not_theirs(requests.put(f"{staged}/bank", data=own, headers=bearer("bureau")), "bank")

    bank.stage("bank", bank.encrypt("bank", values["bank"]))  # the bank's own token: 201
    bureau.stage("credit_bureau", bureau.encrypt("credit_bureau", values["credit_bureau"]))
    assert_not_theirs(requests.put(f"{staged}/bank", data=forged, headers=bearer("applicant")), "bank")
    label, _ = applicant.score({"applicant": values["applicant"]})
    assert label == plaintext_labels(server, row[None])[0]


def test_the_applicant_cannot_send_the_banks_part_inline(serve, tmp_path):
    server = serve(json.dumps(TOKENS))
    applicant, bank, bureau, key_id = parties(server.url, tmp_path)
    row = random_rows(1, seed=332)[0]
    values = values_of(row)
    bureau.stage("credit_bureau", bureau.encrypt("credit_bureau", values["credit_bureau"]))
    mine = applicant.encrypt("applicant", values["applicant"])
    forged = applicant.encrypt("bank", values["bank"])
    parts = multipart(key_id, applicant.version, applicant=mine, bank=forged)
    answer = requests.post(server.url + "/predict", files=parts, headers=bearer("applicant"), timeout=120)
    assert_not_theirs(answer, "bank")
    with pytest.raises(ProtocolError, match="403"):
        applicant.predict({"applicant": mine, "bank": forged})

    # nothing was computed: the bureau's staged part is still there for the real decision
    bank.stage("bank", bank.encrypt("bank", values["bank"]))
    label, _ = applicant.score({"applicant": values["applicant"]})
    assert label == plaintext_labels(server, row[None])[0]
    # a slot bound to no token (credit_bureau: the bureau's token has another name) stays open
    bank.stage("bank", bank.encrypt("bank", values["bank"]))
    label, _ = applicant.score({"applicant": values["applicant"], "credit_bureau": values["credit_bureau"]})
    assert label == plaintext_labels(server, row[None])[0]


def test_unbound_legacy_tokens_fill_any_slot_as_before(serve, tmp_path):
    owner_token, other_token = "x" * 20, "y" * 20
    server = serve(f"{owner_token}, {other_token}")  # a plain list: named party-1, party-2
    owner = quiet_party(server.url, tmp_path / "owner", token=owner_token)
    other = quiet_party(server.url, tmp_path / "other", token=other_token)
    row = random_rows(1, seed=333)[0]
    values = values_of(row)
    other.join(owner.key_id(), owner.key_fingerprint())
    other.stage("bank", other.encrypt("bank", values["bank"]))
    label, _ = owner.score({"applicant": values["applicant"], "credit_bureau": values["credit_bureau"]})
    assert label == plaintext_labels(server, row[None])[0]
    label, _ = owner.score(values)  # the key owner sends every party's part itself
    assert label == plaintext_labels(server, row[None])[0]


def test_tokens_name_their_caller():
    tokens = PartyTokens.parse(json.dumps(TOKENS))
    owner, name = tokens.identify(TOKENS["bank"])
    assert name == "bank" and owner == tokens.owner(TOKENS["bank"]) and TOKENS["bank"] not in owner
    assert tokens.identify("z" * 24) is None
    assert tokens.names == {"applicant", "bank", "bureau"}
    assert PartyTokens.parse("x" * 16 + " " + "y" * 16).names == {"party-1", "party-2"}
