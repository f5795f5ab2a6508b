"""The Paillier backend (ANONYMIZER_ENCRYPTION=paillier): additive models under the applicant's
public key (trees: test_paillier_trees.py); co-parties that hold no secret; blinded, re-randomised answers; bad keys and
ciphertexts refused with 4xx."""

import json
import subprocess
import sys

import numpy as np
import phe
import pytest
import requests
from engine_cases import three_classes
from helpers import (
    by_party,
    multipart,
    paillier_parties,
    plaintext_labels,
    quiet_party,
    random_rows,
    run_paillier_example,
    stage_as_cli_processes,
)

from anonymizer.config import Config
from anonymizer.engines.paillier import scheme
from anonymizer.engines.paillier.model import PaillierModel
from anonymizer.engines.registry import check_settings
from anonymizer.http.app import create_app
from anonymizer.parties import PartyLayout
from anonymizer.service.selection import SelectionPolicy, candidate_grid
from anonymizer.settings import ModelSpec
from challenge_stub.dataset import PARTY_LAYOUT

ADDITIVE = ModelSpec(n_bits=4, additive=True, regularization=0.01, score_bits=5)


@pytest.fixture(scope="module")
def keypair():
    return phe.generate_paillier_keypair(n_length=scheme.MIN_MODULUS_BITS)


def key_bytes(n: int, name: str = "paillier") -> bytes:
    return json.dumps({"scheme": name, "n": format(n, "x")}).encode()


def test_untrusted_public_keys_are_refused_naming_the_problem(keypair):
    public_key, private_key = keypair
    assert scheme.parse_public_key(scheme.public_key_bytes(public_key)).n == public_key.n
    small, _ = phe.generate_paillier_keypair(n_length=1024)
    cases = {
        b"\x00\x01 concrete keys": "Not a Paillier public key",
        key_bytes(public_key.n, "tfhe"): "scheme 'tfhe'",
        key_bytes(small.n): "1024 bits",
        key_bytes(public_key.n * 2 + 2): "even or has a small factor",
        key_bytes(public_key.n * 3): "even or has a small factor",
        key_bytes(1 << 40_000): "hex digits",  # refused before any number is parsed
    }
    for serialized, problem in cases.items():
        with pytest.raises(scheme.BadKey, match=problem):
            scheme.parse_public_key(serialized)


def test_ciphertexts_outside_the_group_or_of_the_wrong_count_are_refused(keypair):
    public_key, private_key = keypair
    good = scheme.encrypt_bits(public_key, np.array([1, 0, 1]))
    assert len(scheme.unpack(public_key, scheme.pack(public_key, good), 3, "bank")) == 3
    with pytest.raises(ValueError, match="3 ciphertexts"):
        scheme.unpack(public_key, scheme.pack(public_key, good[:2]), 3, "bank")
    for bad in (0, public_key.nsquare, private_key.p):  # zero, too large, not a unit
        with pytest.raises(ValueError, match="not in Z"):
            scheme.unpack(public_key, scheme.pack(public_key, [good[0], bad, good[2]]), 3, "bank")


def test_encryption_with_and_without_the_private_key_decrypts_alike(keypair):
    public_key, private_key = keypair
    bits = np.array([1, 0, 0, 1, 1])
    for helper in (None, private_key):
        assert (
            scheme.decrypt_signed(private_key, scheme.encrypt_bits(public_key, bits, helper)) == bits.tolist()
        )


@pytest.mark.parametrize("n_classes", [2, 3])
def test_blinding_keeps_every_decision_ties_included_and_hides_the_score(keypair, n_classes):
    public_key, private_key = keypair
    key = scheme.ServerKey(public_key)
    rng = np.random.default_rng(n_classes)
    outputs = rng.integers(-3, 4, size=(40, 1 if n_classes == 2 else n_classes))
    outputs[:4] = 0  # exact ties (and a two-class score of 0: the first class)
    seen = []
    for row in outputs:
        scores = [public_key.raw_encrypt(int(v) % public_key.n) for v in row]
        values = scheme.decrypt_signed(private_key, scheme.blinded(key, scores, n_classes == 2))
        expected = int(row[0] > 0) if n_classes == 2 else int(np.argmax(row))  # argmax: first on ties
        assert scheme.blinded_labels(values, n_classes)[0] == expected
        seen.append(values[0])
    assert len(set(seen)) == len(seen) and max(abs(v) for v in seen) > 2**40  # not the scores


def test_the_same_inputs_give_unrelated_ciphertexts(keypair, credit_data):
    public_key, private_key = keypair
    X, y = credit_data["training"]
    model = PaillierModel.train(X, y, PartyLayout(PARTY_LAYOUT), ADDITIVE)
    parts = [scheme.pack(public_key, scheme.encrypt_bits(public_key, z[0])) for z in model.party_bits(X[:1])]
    key = scheme.ServerKey(public_key)
    first, second = model.run_encrypted(parts, key), model.run_encrypted(parts, key)
    assert first != second
    one, two = (scheme.unpack(public_key, r, 1, "result")[0] for r in (first, second))
    # re-randomised: neither is the other times a power of g, and the plaintexts differ too
    assert scheme.decrypt_signed(private_key, [one]) != scheme.decrypt_signed(private_key, [two])
    labels = [scheme.blinded_labels(scheme.decrypt_signed(private_key, [c]), 2)[0] for c in (one, two)]
    assert labels[0] == labels[1] == np.searchsorted(model.classes, model.predict(X[:1]))[0]


@pytest.mark.parametrize("classes", ["two", "three"])
def test_real_paillier_equals_the_clear_integer_function(credit_data, classes):
    X, y = credit_data["training"]
    labels = y if classes == "two" else three_classes(X, y)
    model = PaillierModel.train(X, labels, PartyLayout(PARTY_LAYOUT), ADDITIVE)
    reasons = {"reasons": "reasons"} if classes == "two" else {}  # two-class scorecards give reasons
    assert model.info["pbs_count"] == 0 and model.functions == {"decide": None, **reasons}
    rows = random_rows(6, seed=51)
    assert np.array_equal(model.execute(rows), model.predict(rows))


def test_scores_under_paillier_are_at_full_precision(credit_data):
    X, y = credit_data["training"]
    layout = PartyLayout(PARTY_LAYOUT)
    grid = candidate_grid(SelectionPolicy(), len(y), False, 3, additive=True, trees=False, score_widths=(12,))
    assert set(PaillierModel.capabilities.score_widths) == {12}
    assert {p.score_bits for p in grid} == set(SelectionPolicy().score_bits) | {12}  # beside the coarse
    labels = three_classes(X, y)
    wide = PaillierModel.train(X, labels, layout, ModelSpec(n_bits=4, additive=True, score_bits=12))
    assert wide.program.tables.shape[1] == 2**12
    rows = random_rows(4, seed=52)
    assert np.array_equal(wide.execute(rows), wide.predict(rows))  # real Paillier, 12-bit scores


def test_the_constant_on_a_backend_without_lookups_is_an_additive_model(credit_data):
    X, y = credit_data["training"]
    layout = PartyLayout(PARTY_LAYOUT)
    constant = PaillierModel.train(X, y, layout, ModelSpec(majority=True))
    values, counts = np.unique(y, return_counts=True)
    majority = values[np.argmax(counts)]
    assert (
        constant.program.kind == "score_sum" and (constant.execute(random_rows(3, seed=4)) == majority).all()
    )


def test_settings_that_cannot_work_together_are_refused():
    with pytest.raises(ValueError, match="FHE_ENGINE must be one of"):
        Config.from_env({"ANONYMIZER_ENCRYPTION": "paillier", "FHE_ENGINE": "concrete-ml"})
    check_settings("paillier", ModelSpec(max_depth=3, n_estimators=4), selecting=False)  # trees too
    fixed_additive = Config.from_env(
        {"FHE_ENGINE": "concrete-ml", "TREE_SELECTION": "off", "MODEL_ADDITIVE": "1"}
    )
    with pytest.raises(ValueError, match="does not serve additive models.*it serves: single trees"):
        create_app(fixed_additive)  # before anything starts
    with pytest.raises(ValueError, match="ANONYMIZER_ENCRYPTION must be"):
        Config.from_env({"ANONYMIZER_ENCRYPTION": "rsa"})
    assert Config.from_env({"ANONYMIZER_ENCRYPTION": "paillier"}).engine == "paillier"


@pytest.fixture(scope="module")
def paillier_server(serve_fitted):
    """Paillier with default selection. Every test of this module uploads keys from 127.0.0.1,
    one owner: room for all of them within KEY_LIVE_SECONDS (a key in use is never evicted;
    test_key_ownership tests that)."""
    with serve_fitted(ANONYMIZER_ENCRYPTION="paillier", MAX_KEYS_PER_OWNER="64") as server:
        yield server


def part_bytes(url: str, party: str) -> int:
    """Bytes of a party's part under a 2048-bit key: its bit ciphertexts, then per column the
    proof's branches (one per bit and one more), each a commitment, a challenge and a response."""
    columns = requests.get(url + "/fhe/info", timeout=30).json()["paillier"]["column_bits"][party]
    return 512 * sum(columns) + (sum(columns) + len(columns)) * (512 + 16 + 256)


def test_selection_offers_every_family_and_info_names_the_scheme(paillier_server):
    candidates = paillier_server.fit_info["selection"]["candidates"]
    families = {ModelSpec(**c["params"]).family for c in candidates}
    assert {"tree", "forest", "boosted", "additive"} <= families
    info = requests.get(paillier_server.url + "/fhe/info").json()
    assert info["scheme"] == "paillier" and info["engine"] == "paillier"
    assert info["decoding"]["blinded"] and info["paillier"]["min_modulus_bits"] == 2048
    specs = requests.get(paillier_server.url + "/fhe/specs")
    assert json.loads(specs.content)["scheme"] == "paillier"


def test_three_parties_where_only_the_applicant_holds_a_private_key(paillier_server, tmp_path):
    applicant, bank, bureau = paillier_parties(paillier_server.url, tmp_path)
    fingerprint = applicant.key_fingerprint()
    assert bank.key_fingerprint() == bureau.key_fingerprint() == fingerprint
    X = random_rows(200, seed=52)
    decisions = []
    for row in X:
        values = by_party(row)
        bank.stage("bank", bank.encrypt("bank", values["bank"]))
        bureau.stage("credit_bureau", bureau.encrypt("credit_bureau", values["credit_bureau"]))
        label, probability = applicant.score({"applicant": values["applicant"]})
        assert probability is None  # the blinded answer carries the decision only
        decisions.append(label)
    assert decisions == plaintext_labels(paillier_server, X).tolist()
    assert list((tmp_path / "applicant").rglob("paillier-private.json"))
    for co_party in ("bank", "bureau"):
        assert not list((tmp_path / co_party).rglob("paillier-private.json"))
        with pytest.raises(ValueError, match="Only the applicant"):
            (bank if co_party == "bank" else bureau).codec().decrypt(b"")


def test_co_parties_in_their_own_processes_with_the_cli(paillier_server, tmp_path):
    applicant = quiet_party(paillier_server.url, tmp_path / "applicant")
    row = random_rows(1, seed=53)[0]
    values = by_party(row)
    co_parties = {party: values[party] for party in ("bank", "credit_bureau")}
    stage_as_cli_processes(paillier_server.url, tmp_path, applicant, co_parties)
    label, _ = applicant.score({"applicant": values["applicant"]})
    assert label == plaintext_labels(paillier_server, row[None])[0]


def denied_row(server, seed: int) -> np.ndarray:
    """An applicant the served model denies (explain then has a change to look for)."""
    rows = random_rows(200, seed=seed)
    approved = requests.get(server.url + "/fhe/info", timeout=30).json()["classes"][-1]
    return rows[plaintext_labels(server, rows) != approved][0]


def first_approval_in_the_clear(server, party, row: np.ndarray, column: int) -> float | None:
    """What explain must find: the nearest other encoding level of `column` that plaintext
    /predict approves (None if none does)."""
    approved = requests.get(server.url + "/fhe/info", timeout=30).json()["classes"][-1]
    candidates = sorted(party.codec().other_levels(column, row[column]), key=lambda v: abs(v - row[column]))
    changed = np.repeat(row[None], len(candidates), axis=0)
    changed[:, column] = candidates
    labels = plaintext_labels(server, changed)
    return next((float(v) for v, label in zip(candidates, labels) if label == approved), None)


def test_explain_under_paillier_through_the_sdk_and_the_cli(paillier_server, tmp_path):
    applicant = quiet_party(paillier_server.url, tmp_path / "applicant")
    key_id, fingerprint = applicant.key_id(), applicant.key_fingerprint()
    row = denied_row(paillier_server, seed=57)
    values = by_party(row)
    for name in ("bank", "credit_bureau"):
        co_party = quiet_party(paillier_server.url, tmp_path / name)
        co_party.join(key_id, fingerprint)
        co_party.stage(name, co_party.encrypt(name, values[name]), uses=64)  # both runs below
    names = applicant.info().feature_names
    column = PARTY_LAYOUT["applicant"][0]
    expected = first_approval_in_the_clear(paillier_server, applicant, row, column)

    found = applicant.explain({"applicant": values["applicant"]}, "applicant", names[column])
    assert found["probability"] is None and found["value"] == expected
    if expected is not None:
        assert found["probability_after"] is None and found["change"] == expected - row[column]

    command = [sys.executable, "-m", "anonymizer.party", "--server", paillier_server.url]
    command += ["--workdir", str(tmp_path / "applicant"), "explain", "--feature", names[column]]
    command += ["--input", f"applicant={json.dumps(values['applicant'])}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["value"] == expected


def test_bad_keys_and_ciphertexts_are_4xx_and_lose_nothing(paillier_server, tmp_path, keypair):
    url = paillier_server.url
    small, _ = phe.generate_paillier_keypair(n_length=1024)
    for body, problem in (
        (key_bytes(small.n), "1024 bits"),
        (key_bytes(keypair[0].n * 2 + 2), "even"),
        (key_bytes(keypair[0].n, "tfhe"), "scheme"),
        (b"not a key", "Not a Paillier public key"),
    ):
        response = requests.post(url + "/fhe/keys", data=body)
        assert response.status_code == 400 and problem in response.json()["description"]
    assert requests.get(url + "/fhe/keys/no-such-key").status_code == 404

    client = quiet_party(url, tmp_path / "applicant")
    key_id = client.key_id()
    public_key = client.codec().public_key
    values = by_party(random_rows(1, seed=54)[0])
    client.stage("bank", client.encrypt("bank", values["bank"]))
    client.stage("credit_bureau", client.encrypt("credit_bureau", values["credit_bureau"]))
    good = client.encrypt("applicant", values["applicant"])
    size = scheme.width(public_key)
    outside = good[:size] + public_key.nsquare.to_bytes(size, "big") + good[2 * size :]
    for bad, problem in ((good[:-size], "bytes"), (outside, "not in Z")):
        response = requests.post(url + "/predict", files=multipart(key_id, applicant=bad))
        assert response.status_code == 400 and problem in response.json()["description"]
    response = requests.post(url + "/predict", files=multipart(key_id, applicant=good))
    assert response.status_code == 201  # the staged parts survived the refusals
    label, _ = client.decrypt(response.content)
    assert label in (0, 1)


def test_the_documented_block_runs_as_four_processes_and_only_the_applicant_holds_a_secret(
    paillier_server, tmp_path
):
    homes = {role: tmp_path / role for role in ("applicant", "bank", "credit_bureau")}
    for home in homes.values():
        home.mkdir()
    for row in random_rows(3, seed=55).tolist():
        keys = run_paillier_example(paillier_server.url, row, "applicant-keys", homes["applicant"])
        key_id, fingerprint = keys["key_id"], keys["fingerprint"]
        for party in ("bank", "credit_bureau"):
            staged = run_paillier_example(paillier_server.url, row, party, homes[party], key_id, fingerprint)
            assert staged["staged"] == party and staged["bytes"] == part_bytes(paillier_server.url, party)
        output = run_paillier_example(paillier_server.url, row, "applicant", homes["applicant"], key_id)
        assert output["decision"] == plaintext_labels(paillier_server, np.array([row]))[0]
    assert [p.name for p in homes["applicant"].iterdir()] == ["private.json"]
    assert not any(homes["bank"].iterdir()) and not any(homes["credit_bureau"].iterdir())


def test_the_consoles_speak_paillier_and_a_co_party_joins_by_key_id(paillier_server, tmp_path):
    from test_console import ConsoleApi, console

    row = denied_row(paillier_server, seed=56)
    processes, apis = [], {}
    try:
        for party in PARTY_LAYOUT:  # no shared keys directory: each its own
            process, url = console(paillier_server.url, party, tmp_path / party, tmp_path / party / "keys")
            processes.append(process)
            apis[party] = ConsoleApi(url)

        def step(party: str, name: str, body: dict) -> dict:
            response = apis[party].post(f"/api/{name}", body)
            assert response.status_code == 200, response.text
            return response.json()

        def values(party: str) -> dict:
            state = apis[party].get("/api/state").json()
            assert state["scheme"] == "paillier"
            return {c["name"]: float(row[c["column"]]) for c in state["columns"]}

        made = step("applicant", "keys", {})
        key_id, fingerprint = made["key_id"], made["fingerprint"]
        assert apis["applicant"].get("/api/state").json()["fingerprint"] == fingerprint
        refused = apis["bank"].post("/api/keys", {}, timeout=30)
        assert refused.status_code == 400 and "applicant has not made keys" in refused.json()["description"]
        unpinned = apis["bank"].post("/api/keys", {"key_id": key_id}, timeout=30)
        assert unpinned.status_code == 400 and "fingerprint" in unpinned.json()["description"]
        for party in ("bank", "credit_bureau"):
            joined = step(party, "keys", {"key_id": key_id, "fingerprint": fingerprint})
            assert joined["joined"] and joined["fingerprint"] == fingerprint
            assert step(party, "encrypt", {"values": values(party)})["bytes"] == part_bytes(
                paillier_server.url, party
            )
            step(party, "stage", {"uses": 64})  # the decision, then explain's
            assert not list((tmp_path / party).rglob("paillier-private.json"))
        answer = step("applicant", "decide", {"values": values("applicant")})
        assert answer["decision"] == plaintext_labels(paillier_server, row[None])[0]
        gives_reasons = quiet_party(paillier_server.url, tmp_path / "reader").gives_reasons
        assert answer["probability"] is None and (answer["reasons"] is not None) == gives_reasons
        state = apis["applicant"].get("/api/state").json()
        feature = state["columns"][0]["name"]
        explained = step("applicant", "explain", {"values": values("applicant"), "feature": feature})
        client = quiet_party(paillier_server.url, tmp_path / "applicant")  # the same keys' codec
        expected = first_approval_in_the_clear(paillier_server, client, row, state["columns"][0]["column"])
        assert explained["feature"] == feature and explained["value"] == expected
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


def test_reasons_under_paillier_equal_the_clear_reasons_and_keep_the_margin_blinded(credit_data, keypair):
    from anonymizer.engines.paillier.answers import read_reasons

    X, y = credit_data["training"]
    model = PaillierModel.train(
        X, y, PartyLayout(PARTY_LAYOUT), ModelSpec(n_bits=4, additive=True, score_bits=12)
    )
    assert model.functions == {"decide": None, "reasons": "reasons"}
    public_key, private_key = keypair
    key = model.parse_keys(scheme.public_key_bytes(public_key))
    rows = np.concatenate([random_rows(4, seed=71), X[:4]])
    denied = 0
    for row in rows:
        parts = [
            scheme.pack(public_key, scheme.encrypt_bits(public_key, z[0], private_key))
            for z in model.party_bits(row[None])
        ]
        clear = model.reasons(row[None])[0]
        columns, margin = len(clear) - 1, int(clear[0]) + model.program.score_shift
        answers = [model.run_encrypted(parts, key, "reasons") for _ in range(2)]
        values = [
            scheme.decrypt_signed(private_key, scheme.unpack(public_key, a, 1 + 2 * columns, "r"))
            for a in answers
        ]
        label, lost, alone = read_reasons(values[0], columns)
        assert label == int(margin > 0) and lost == clear[1:].tolist()
        assert alone == [margin <= 0 < margin + points for points in clear[1:]]
        assert values[0][0] != margin and values[0][0] != values[1][0]  # the margin stays blinded
        assert values[0][1:] != values[1][1:] or columns == 0  # flips blinded afresh, points re-encrypted
        assert answers[0] != answers[1]
        denied += margin <= 0
    assert 0 < denied < len(rows)


@pytest.fixture(scope="module")
def scorecard_server(serve_fitted):
    """Paillier serving a fixed two-class additive model: decisions and reasons."""
    with serve_fitted(ANONYMIZER_ENCRYPTION="paillier", TREE_SELECTION="off", MODEL_ADDITIVE="1") as server:
        yield server


def test_three_parties_ask_for_reasons_under_paillier(scorecard_server, tmp_path):
    applicant = quiet_party(scorecard_server.url, tmp_path / "applicant")
    key_id, fingerprint = applicant.key_id(), applicant.key_fingerprint()
    assert applicant.gives_reasons
    co_parties = {
        name: quiet_party(scorecard_server.url, tmp_path / name) for name in ("bank", "credit_bureau")
    }
    for co_party in co_parties.values():
        co_party.join(key_id, fingerprint)
    rows = random_rows(6, seed=72)
    for row in rows:
        values = by_party(row)
        for name, co_party in co_parties.items():
            co_party.stage(name, co_party.encrypt(name, values[name]))
        found = applicant.reasons({"applicant": values["applicant"]}, top=None)
        assert found["decision"] == plaintext_labels(scorecard_server, row[None])[0]
        assert found["probability"] is None and found["margin_points"] is None
        approved = found["decision"] == applicant.info().classes[-1]
        assert all(r["points_lost"] > 0 for r in found["reasons"]) and (approved or found["reasons"])
        assert not (approved and any(r["approves_alone"] for r in found["reasons"]))
    for name in co_parties:
        assert not list((tmp_path / name).rglob("paillier-private.json"))


def test_key_ids_are_never_read_as_command_line_options():
    from anonymizer.state.keys import KEY_ID_PATTERN, new_key_id

    ids = [new_key_id() for _ in range(3000)]  # a "-" first would show in ~47 of them
    assert len(set(ids)) == len(ids) and all(KEY_ID_PATTERN.match(i) for i in ids)
    assert not any(i.startswith("-") for i in ids)
