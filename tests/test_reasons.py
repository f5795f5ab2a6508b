"""Encrypted reason codes of two-class additive models (engines/thermometer/reasons.py): the points
each column lost, from the decision's own ciphertexts and keys, through the SDK, CLI and HTTP."""

import json

import numpy as np
import pytest
import requests
from engine_cases import three_classes
from helpers import multipart, plaintext_labels, quiet_party, random_rows
from test_engine_contract import outputs_reachable_without_a_lookup

from anonymizer.engines.base import DECIDE, REASONS
from anonymizer.engines.registry import load_model
from anonymizer.engines.thermometer.model import ThermometerModel
from anonymizer.engines.thermometer.reasons import (
    pack_reasons,
    reason_columns,
    reason_groups,
    unpack_reasons,
)
from anonymizer.parties import PartyLayout
from anonymizer.settings import ModelSpec
from anonymizer.state.models import ModelStore
from anonymizer.state.vault import ModelKeySource
from anonymizer.wire import explained_column, rows_in
from challenge_stub.dataset import PARTY_LAYOUT

ADDITIVE = ModelSpec(n_bits=4, additive=True, regularization=0.01, score_bits=5)
ADDITIVE_ENV = {"TREE_ADDITIVE": "1", "TREE_N_BITS": "4", "ADDITIVE_C": "0.01"}


@pytest.fixture(scope="module")
def scorecard(credit_data):
    X, y = credit_data["training"]
    return ThermometerModel.train(X, y, PartyLayout(PARTY_LAYOUT), ADDITIVE)


def value_in_level(edges: np.ndarray, level: int) -> float:
    """A value whose thermometer level (edges below it) is `level`."""
    if level == 0:
        return float(edges[0])
    if level == len(edges):
        return float(edges[-1]) + 1.0
    return float(edges[level - 1] + edges[level]) / 2


def test_a_two_class_scorecard_serves_reasons_with_the_decisions_keys(scorecard):
    assert {DECIDE: "score", REASONS: "reasons"}.items() <= scorecard.functions.items()
    assert all(
        f in (DECIDE, REASONS) or explained_column(f) is not None or rows_in(f) for f in scorecard.functions
    )
    decision_only = scorecard.compile(random_rows(200, seed=3)).runnable.decision_circuit
    served = scorecard.compiled.runnable
    assert served.module.size_of_bootstrap_keys == decision_only.size_of_bootstrap_keys
    assert served.module.size_of_keyswitch_keys == decision_only.size_of_keyswitch_keys
    assert scorecard.info["pbs_count"] == 1  # the decision itself still costs one lookup
    reasons = served.module.functions()[scorecard.functions[REASONS]]
    groups = reason_groups(scorecard.program)
    assert len(groups) < len(reason_columns(scorecard.program))  # several columns share a lookup
    assert reasons.programmable_bootstrap_count == 1 + len(groups)
    for graph in served.graphs.values():
        assert outputs_reachable_without_a_lookup(graph) == []


def test_points_lost_are_what_moving_the_column_to_its_best_bin_would_gain(scorecard):
    X = random_rows(60, seed=41)
    reasons = scorecard.reasons(X)
    assert np.array_equal(reasons[:, 0], scorecard.outputs(X)[:, 0])
    assert (reasons[:, 1:] >= 0).all() and (reasons[:, 1:] > 0).any()
    order = [c for columns in PARTY_LAYOUT.values() for c in columns]
    for entry, column in enumerate(reason_columns(scorecard.program)):
        feature = order[column.column]
        edges = np.asarray(scorecard.encoding.edges[feature])
        gains = []
        for level in range(len(edges) + 1):  # the column's best bin: the most decision output
            moved = X.copy()
            moved[:, feature] = value_in_level(edges, level)
            gains.append(scorecard.outputs(moved)[:, 0])
        best = np.max(gains, axis=0)
        # the score is additive: what a column lost is exactly what its best bin would add
        assert np.array_equal(best - reasons[:, 0], reasons[:, 1 + entry]), feature


def test_packed_reasons_unpack_to_every_columns_points_and_fit_their_lookups(scorecard):
    program = scorecard.program
    columns, groups = reason_columns(program), reason_groups(program)
    radices = [c.best + 1 for c in columns]
    assert sorted(e for g in groups for e in g) == list(range(len(columns)))
    assert all(np.prod([radices[e] for e in g]) <= program.tables.shape[1] for g in groups)
    unpacked = scorecard.reasons(random_rows(500, seed=40))
    packed = pack_reasons(unpacked, groups, radices)
    assert packed.max() < program.tables.shape[1] and packed.min() >= 0
    for row, full in zip(packed, unpacked):
        assert unpack_reasons(row, groups, radices) == full[1:].tolist()
    # simulated on the decision's arguments, the module outputs exactly the packed values
    reasons = scorecard.compiled.runnable.module.functions()[scorecard.functions[REASONS]]
    X = random_rows(40, seed=39)
    expected = pack_reasons(scorecard.reasons(X), groups, radices)
    for arguments, row in zip(scorecard.circuit_arguments(X), expected):
        assert np.array_equal(np.asarray(reasons.simulate(*arguments)), row)


def test_reasons_run_on_the_decisions_ciphertexts_under_real_fhe(scorecard):
    X = random_rows(3, seed=42)
    module = scorecard.compiled.runnable.module
    module.keygen()
    decide, explain = (module.functions()[scorecard.functions[f]] for f in (DECIDE, REASONS))
    columns = reason_columns(scorecard.program)
    packed = pack_reasons(
        scorecard.reasons(X), reason_groups(scorecard.program), [c.best + 1 for c in columns]
    )
    for arguments, expected in zip(scorecard.circuit_arguments(X), packed):
        encrypted = decide.encrypt(*arguments)  # what a party sends for a decision
        decision = decide.decrypt(decide.run(*encrypted))
        reasons = explain.decrypt(explain.run(*encrypted))
        assert np.array_equal(np.asarray(reasons), expected)
        assert int(np.asarray(decision).reshape(-1)[0]) == expected[0]


@pytest.mark.parametrize("kind", ["three classes", "a tree"])
def test_other_models_serve_only_their_decision(kind, credit_data):
    X, y = credit_data["training"]
    layout = PartyLayout(PARTY_LAYOUT)
    if kind == "three classes":
        model = ThermometerModel.train(X, three_classes(X, y), layout, ADDITIVE)
    else:
        model = ThermometerModel.train(X, y, layout, ModelSpec(max_depth=3, n_bits=4))
    assert REASONS not in model.functions and DECIDE in model.functions  # and batched explanations
    assert "reasons" not in model.public_description()
    with pytest.raises(ValueError, match="does not compute 'reasons'"):
        model.run_encrypted([], None, REASONS)


def beside_explanations(functions: dict) -> dict:
    """The served functions other than batched explanations and several rows (test_explain.py and
    test_rows.py cover those)."""
    return {f: name for f, name in functions.items() if explained_column(f) is None and not rows_in(f)}


def served_model(server):
    return ModelStore(server.model_dir, ModelKeySource(server.model_dir), load_model).current()


@pytest.fixture(scope="module")
def additive_server(serve_fitted):
    """The fixed two-class scorecard (fitted once per session; the console tests serve it too)."""
    with serve_fitted(**ADDITIVE_ENV, TREE_SELECTION="off") as server:
        yield server


def stage_co_parties(client, values: dict) -> bytes:
    """Stage the bank's and the bureau's parts; the applicant's ciphertext, to send."""
    for party in ("bank", "credit_bureau"):
        client.stage(party, client.encrypt(party, values[party]))
    return client.encrypt("applicant", values["applicant"])


def by_party(row: np.ndarray) -> dict:
    return {party: row[columns].tolist() for party, columns in PARTY_LAYOUT.items()}


def test_three_parties_get_the_served_models_reasons_through_http(additive_server, tmp_path):
    model = served_model(additive_server)
    X = random_rows(4, seed=43)
    expected = model.reasons(X)
    applicant = quiet_party(additive_server.url, tmp_path / "applicant", keys_dir=tmp_path / "shared")
    bank = quiet_party(additive_server.url, tmp_path / "bank", keys_dir=tmp_path / "shared")
    bureau = quiet_party(additive_server.url, tmp_path / "bureau", keys_dir=tmp_path / "shared")
    info = applicant.info().to_document()
    assert beside_explanations(info["functions"]) == {"decide": "score", "reasons": "reasons"}
    order = [c for columns in PARTY_LAYOUT.values() for c in columns]
    assert info["reasons"]["columns"] == [order[c.column] for c in reason_columns(model.program)]
    for row, clear in zip(X, expected):
        values = by_party(row)
        bank.stage("bank", bank.encrypt("bank", values["bank"]))
        bureau.stage("credit_bureau", bureau.encrypt("credit_bureau", values["credit_bureau"]))
        answer = applicant.reasons({"applicant": values["applicant"]}, top=None)
        assert answer["decision"] == plaintext_labels(additive_server, row[None])[0]
        lost = {c: int(p) for c, p in zip(info["reasons"]["columns"], clear[1:]) if p > 0}
        assert {r["column"]: r["points_lost"] for r in answer["reasons"]} == lost
        assert [r["points_lost"] for r in answer["reasons"]] == sorted(lost.values(), reverse=True)
        assert all(r["feature"] == info["feature_names"][r["column"]] for r in answer["reasons"])


def test_explain_changes_the_top_reason_when_no_feature_is_named(additive_server, tmp_path):
    client = quiet_party(additive_server.url, tmp_path / "party")
    X = random_rows(200, seed=44)
    denied = X[plaintext_labels(additive_server, X) == 0]
    assert len(denied) > 0
    result = client.explain(by_party(denied[0]))
    assert result["decision"] == 0 and result["reasons"]
    top = result["reasons"][0]
    assert result["feature"] == top["feature"]
    assert top["points_lost"] == max(r["points_lost"] for r in result["reasons"])
    if result.get("value") is not None:  # the change, applied in the clear, approves
        changed = denied[0].copy()
        changed[top["column"]] = result["value"]
        assert plaintext_labels(additive_server, changed[None])[0] == 1


def test_asking_badly_or_where_none_are_served_is_400_and_consumes_nothing(
    additive_server, start_anonymizer, tmp_path
):
    client = quiet_party(additive_server.url, tmp_path / "party")
    values = by_party(random_rows(1, seed=45)[0])
    key_id = client.key_id()
    applicant = stage_co_parties(client, values)
    bad = {**multipart(key_id, applicant=applicant), "reasons": (None, "maybe")}
    response = requests.post(additive_server.url + "/predict", files=bad)
    assert response.status_code == 400 and "'reasons'" in response.json()["description"]
    asked = {**multipart(key_id, applicant=applicant), "reasons": (None, "1")}
    response = requests.post(additive_server.url + "/predict", files=asked)  # the staged parts survived
    assert response.status_code == 201 and response.headers["X-FHE-Function"] == "reasons"

    tree = start_anonymizer(REASON_CODES="1")  # a depth-5 tree: no reasons to give
    assert requests.post(tree.url + "/fit", timeout=300).status_code == 201
    assert "reasons" not in requests.get(tree.url + "/fhe/info").json()["functions"]
    tree_party = quiet_party(tree.url, tmp_path / "tree-party")
    tree_key = tree_party.key_id()
    ciphertext = stage_co_parties(tree_party, values)
    asked = {**multipart(tree_key, applicant=ciphertext), "reasons": (None, "1")}
    response = requests.post(tree.url + "/predict", files=asked)
    assert response.status_code == 400 and response.json()["code"] == "not_offered"
    response = requests.post(tree.url + "/predict", files=multipart(tree_key, applicant=ciphertext))
    assert response.status_code == 201  # the refusal consumed no staged input
    with pytest.raises(ValueError, match="no reason codes"):
        tree_party.reasons(values)


def test_an_operator_can_turn_reasons_off(start_anonymizer, tmp_path):
    server = start_anonymizer(REASON_CODES="0", **ADDITIVE_ENV)
    assert requests.post(server.url + "/fit", timeout=300).status_code == 201
    info = requests.get(server.url + "/fhe/info").json()
    assert beside_explanations(info["functions"]) == {"decide": "score"} and "reasons" not in info
    client = quiet_party(server.url, tmp_path / "party")
    row = random_rows(1, seed=46)[0]
    values = by_party(row)
    key_id = client.key_id()
    ciphertexts = {party: client.encrypt(party, v) for party, v in values.items()}
    asked = {**multipart(key_id, **ciphertexts), "reasons": (None, "1")}
    response = requests.post(server.url + "/predict", files=asked)
    assert response.status_code == 400 and "does not give 'reasons'" in response.json()["description"]
    decision = client.decrypt(client.predict(ciphertexts)[0])[0]  # decisions are unaffected
    assert decision == plaintext_labels(server, row[None])[0]


def test_the_cli_prints_the_top_reasons(additive_server, tmp_path):
    import subprocess
    import sys

    row = random_rows(1, seed=47)[0]
    inputs = [arg for party, v in by_party(row).items() for arg in ("--input", f"{party}={json.dumps(v)}")]
    command = [sys.executable, "-m", "anonymizer.party", "--server", additive_server.url]
    command += ["--workdir", str(tmp_path), "reasons", *inputs, "--top", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert answer["decision"] == plaintext_labels(additive_server, row[None])[0]
    assert len(answer["reasons"]) <= 2
    clear = served_model(additive_server).reasons(row[None])[0]
    assert (
        sorted((r["points_lost"] for r in answer["reasons"]), reverse=True)
        == sorted(clear[1:][clear[1:] > 0], reverse=True)[:2]
    )
