"""Batched explanations (engines/thermometer/explain.py): the decision at every level of one feature
from one encrypted call on the decision's own ciphertexts and keys — equal to the decision at that
level for every family, counted as that many decisions, and never more than the parties allowed."""

import shutil

import numpy as np
import pytest
import requests
from helpers import by_party, multipart, plaintext_labels, quiet_party, random_rows
from test_engine_contract import outputs_reachable_without_a_lookup
from test_reasons import ADDITIVE, ADDITIVE_ENV

from anonymizer.engines.base import DECIDE
from anonymizer.engines.thermometer.explain import explain_columns
from anonymizer.engines.thermometer.model import ThermometerModel
from anonymizer.parties import PartyLayout
from anonymizer.settings import DecisionLimits, ModelSpec
from anonymizer.state.decisions import BudgetSpent, DecisionBudget
from anonymizer.wire import explain_function, explained_column
from challenge_stub.dataset import PARTY_LAYOUT

FAMILIES = {
    "scorecard": ADDITIVE,
    "tree": ModelSpec(n_bits=4, max_depth=4, min_samples_leaf=20),
    "forest": ModelSpec(n_bits=3, max_depth=3, min_samples_leaf=20, n_estimators=3),
    "boosted": ModelSpec(n_bits=3, max_depth=2, min_samples_leaf=20, n_estimators=4, boosted=True),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request, credit_data):
    X, y = credit_data["training"]
    return ThermometerModel.train(X, y, PartyLayout(PARTY_LAYOUT), FAMILIES[request.param])


def explained_features(model) -> list[int]:
    return sorted(c for f in model.functions if (c := explained_column(f)) is not None)


def moved_to_each_level(model, X: np.ndarray, feature: int) -> np.ndarray:
    """(rows, levels, ...) the decision's clear outputs with `feature` moved to each level."""
    edges = model.encoding.edges[feature]
    values = [edges[0], *((edges[:-1] + edges[1:]) / 2), edges[-1] + 1.0]
    outputs = []
    for value in values:
        moved = X.copy()
        moved[:, feature] = value
        outputs.append(model.outputs(moved))
    return np.stack(outputs, axis=1)


def test_every_feature_the_model_reads_gets_a_batch_on_the_decisions_keys(model):
    features = explained_features(model)
    read = [c.feature for c in explain_columns(model.program, model.encoding, model.layout)]
    assert features and features == sorted(read)
    served = model.compiled.runnable
    decision_only = model.compile(random_rows(200, seed=3)).runnable.decision_circuit
    assert served.module.size_of_bootstrap_keys == decision_only.size_of_bootstrap_keys
    assert served.module.size_of_keyswitch_keys == decision_only.size_of_keyswitch_keys
    for graph in served.graphs.values():  # every output is refreshed by a lookup
        assert outputs_reachable_without_a_lookup(graph) == []
    unread = set(range(model.layout.n_features)) - set(features)
    X = random_rows(200, seed=5)
    for feature in unread:  # features left out never change a decision
        moved = moved_to_each_level(model, X, feature)
        assert (moved == moved[:, :1]).all(), feature


def test_the_batch_is_the_decision_at_each_level_in_the_clear_and_simulated(model):
    X = random_rows(500, seed=6)
    for feature in explained_features(model):
        assert np.array_equal(model.explanations(X, feature), moved_to_each_level(model, X, feature))
    # simulation: 500 row-evaluations spread over the features
    functions = model.compiled.runnable.module.functions()
    features = explained_features(model)
    arguments = model.circuit_arguments(X)
    for i, row_arguments in enumerate(arguments):
        feature = features[i % len(features)]
        simulated = functions[model.functions[explain_function(feature)]].simulate(*row_arguments)
        clear = model.explanations(X[i : i + 1], feature)[0]
        assert np.array_equal(np.asarray(simulated).reshape(clear.shape), clear), (i, feature)


def test_the_batch_runs_on_a_decisions_ciphertexts_under_real_fhe(model):
    module = model.compiled.runnable.module
    module.keygen()
    functions = module.functions()
    decide = functions[model.functions[DECIDE]]
    X = random_rows(2, seed=7)
    features = explained_features(model)
    for row, arguments in zip(X, model.circuit_arguments(X)):
        encrypted = decide.encrypt(*arguments)  # what the parties send for a decision
        for feature in (features[0], features[-1]):
            explain = functions[model.functions[explain_function(feature)]]
            result = explain.decrypt(explain.run(*encrypted))
            clear = model.explanations(row[None], feature)[0]
            assert np.array_equal(np.asarray(result).reshape(clear.shape), clear)


def test_a_batch_counts_as_its_levels_against_the_budget(tmp_path):
    budget = DecisionBudget(tmp_path / "d", DecisionLimits(per_key=10, per_owner=0, window_seconds=100))
    spent = budget.spend("key", "owner", 8)
    with pytest.raises(BudgetSpent, match="for a call that shows 3"):
        budget.spend("key", "owner", 3)  # 8 + 3 > 10: refused whole, nothing taken
    assert budget.remaining("key", "owner")["key"] == 2
    budget.refund(spent)  # a failed batch gives all its decisions back
    assert budget.remaining("key", "owner")["key"] == 10
    with pytest.raises(BudgetSpent):
        budget.spend("key", "owner", 11)  # more than a whole window allows


@pytest.fixture(scope="module")
def additive_server(serve_fitted):
    with serve_fitted(**ADDITIVE_ENV, TREE_SELECTION="off") as server:
        yield server


def nearest_approving(server, row: np.ndarray, feature: int, values: list[float]) -> float | None:
    """The plaintext answer: the approving value of `feature` nearest the row's."""
    variants = np.repeat(row[None], len(values), axis=0)
    variants[:, feature] = values
    approved = plaintext_labels(server, variants) == 1
    order = sorted(range(len(values)), key=lambda i: abs(values[i] - row[feature]))
    return next((values[i] for i in order if approved[i]), None)


def test_three_parties_explain_a_named_feature_in_one_batched_call_equal_to_plaintext(
    additive_server, tmp_path
):
    client = quiet_party(additive_server.url, tmp_path / "party")
    info = client.info()
    X = random_rows(300, seed=44)
    labels = plaintext_labels(additive_server, X)
    explained = [explained_column(f) for f in info.functions if explained_column(f) is not None]
    applicant_features = [f for f in explained if f in info.parties["applicant"]]
    rows = [*X[labels == 0][:6], *X[labels == 1][:2]]  # denied applicants, then approved ones
    for index, row in enumerate(rows):
        feature = applicant_features[index % len(applicant_features)]
        values = client.codec().level_values(feature)
        levels = len(values)
        for party in ("bank", "credit_bureau"):  # co-parties consent to one batch: its levels
            client.stage(party, client.encrypt(party, by_party(row)[party]), uses=levels)
        name = info.feature_names[feature]
        result = client.explain({"applicant": by_party(row)["applicant"]}, "applicant", name)
        assert result["encrypted_predictions"] == 1 and result["levels_decided"] == levels
        assert result["decision"] == info.classes[int(plaintext_labels(additive_server, row[None])[0])]
        if result["decision"] == info.classes[-1]:
            assert result["already_approved"] and "value" not in result
        else:
            expected = nearest_approving(additive_server, row, feature, values)
            assert result["value"] == (pytest.approx(expected) if expected is not None else None)
    assert (labels == 0).sum() >= 6 and (labels == 1).sum() >= 2


def test_explain_without_a_feature_chooses_it_by_reasons_then_decides_it_in_one_batch(
    additive_server, tmp_path
):
    client = quiet_party(additive_server.url, tmp_path / "party")
    info = client.info()
    X = random_rows(200, seed=45)
    row = X[plaintext_labels(additive_server, X) == 0][0]
    result = client.explain(by_party(row))  # every party's values given: nothing staged
    assert result["encrypted_predictions"] == 2 and result["reasons"]
    feature = info.feature_names.index(result["feature"])
    assert result["feature"] == result["reasons"][0]["feature"]
    expected = nearest_approving(additive_server, row, feature, client.codec().level_values(feature))
    assert result["value"] == (pytest.approx(expected) if expected is not None else None)


def test_a_batch_takes_no_staged_input_allowed_fewer_decisions_and_bad_asks_are_400(
    additive_server, tmp_path
):
    client = quiet_party(additive_server.url, tmp_path / "party")
    info = client.info()
    key_id = client.key_id()
    row = random_rows(1, seed=46)[0]
    values = by_party(row)
    feature = next(explained_column(f) for f in info.functions if explained_column(f) is not None)
    levels = len(client.codec().level_values(feature))
    applicant = client.encrypt("applicant", values["applicant"])
    for party in ("bank", "credit_bureau"):
        client.stage(party, client.encrypt(party, values[party]), uses=levels - 1)

    def ask(**fields) -> requests.Response:
        form = {**multipart(key_id, applicant=applicant), **{k: (None, v) for k, v in fields.items()}}
        return requests.post(additive_server.url + "/predict", files=form, timeout=120)

    short = ask(explain=str(feature))  # the co-parties allowed one decision fewer than it shows
    assert short.status_code == 400 and short.json()["code"] == "missing_input"
    assert f"{levels} decisions" in short.json()["description"]
    for fields, code in (
        ({"explain": "x1"}, None),
        ({"explain": "99999"}, "not_offered"),
        ({"explain": str(feature), "reasons": "1"}, None),
    ):
        response = ask(**fields)
        assert response.status_code == 400, fields
        assert code is None or response.json()["code"] == code
    for _ in range(levels - 1):  # every refusal left all the staged uses in place
        assert ask().status_code == 201
    assert ask().json()["code"] == "missing_input"  # and then they are spent
    client.stage("bank", client.encrypt("bank", values["bank"]), uses=levels)
    client.stage("credit_bureau", client.encrypt("credit_bureau", values["credit_bureau"]), uses=levels)
    batched = ask(explain=str(feature))
    assert batched.status_code == 201 and batched.headers["X-FHE-Function"] == explain_function(feature)
    assert ask().json()["code"] == "missing_input"  # the batch used all of them


def test_an_applicant_cannot_buy_a_batch_for_one_decision_of_its_budget(
    additive_server, start_anonymizer, tmp_path
):
    model_dir = tmp_path / "model"
    shutil.copytree(additive_server.model_dir, model_dir)
    client = quiet_party(additive_server.url, tmp_path / "probe")
    feature = next(explained_column(f) for f in client.info().functions if explained_column(f) is not None)
    levels = len(client.codec().level_values(feature))
    server = start_anonymizer(
        model_dir=model_dir,
        **ADDITIVE_ENV,
        ANONYMIZER_DECISIONS_PER_KEY=str(levels),
        ANONYMIZER_DECISION_WINDOW_SECONDS="600",
    )
    applicant = quiet_party(server.url, tmp_path / "applicant")
    key_id = applicant.key_id()
    values = by_party(random_rows(1, seed=48)[0])
    parts = {p: applicant.encrypt(p, v) for p, v in values.items()}

    def ask(**fields) -> requests.Response:
        form = {**multipart(key_id, **parts), **{k: (None, v) for k, v in fields.items()}}
        return requests.post(server.url + "/predict", files=form, timeout=120)

    assert ask().status_code == 201  # one decision spent: the batch's `levels` no longer fit
    refused = ask(explain=str(feature))
    assert refused.status_code == 429 and refused.json()["code"] == "budget_spent"
    for _ in range(levels - 1):  # the refused batch took nothing: every other decision is left
        assert ask().status_code == 201
    assert ask().status_code == 429
