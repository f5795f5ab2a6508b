"""The thermometer engine's own behaviour: encoding, block cut, boosting, data checks (the shared
contract is in test_engine_contract.py)."""

import numpy as np
import pytest
from engine_cases import cases_of, three_classes, trained
from sklearn.ensemble import GradientBoostingClassifier

from anonymizer.engines.thermometer.decoding import decode_shares
from anonymizer.engines.thermometer.encoding import ThresholdEncoding
from anonymizer.engines.thermometer.leafsum import SCORE_BITS, NotCompilable
from anonymizer.engines.thermometer.model import BOOSTING_LEARNING_RATE, ThermometerModel
from anonymizer.parties import PartyLayout
from anonymizer.service.training import check_training_data
from anonymizer.settings import ModelSpec
from challenge_stub.dataset import PARTY_LAYOUT


@pytest.mark.parametrize("case", cases_of("thermometer"))
def test_trees_cost_fewer_lookups_than_leaves_and_additive_models_one_per_score(case):
    model = trained(case)
    if "score_outputs" in model.info:  # additive: one lookup per class score, nothing else
        assert model.info["pbs_count"] == model.info["score_outputs"] == model.program.n_lookups
    else:
        assert 0 < model.info["pbs_count"] < model.info["tree_leaves"]


def test_circuit_takes_each_party_s_threshold_bits():
    model = trained(cases_of("thermometer")[0])
    for index, columns in enumerate(model.layout.columns.values()):
        n_bits = sum(model.encoding.n_bits(c) for c in columns)
        assert model.compiled.runnable.decision_circuit.graph.input_nodes[index].output.shape == (n_bits,)


def test_encoding_levels_count_the_bits_and_respect_the_resolution():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=500), rng.integers(0, 3, 500), np.full(500, 7.0)])
    encoding = ThresholdEncoding.fit(X, n_bits=4)
    assert [encoding.n_bits(c) for c in range(3)] == [15, 2, 1]
    bits = encoding.bits(X, [0, 1, 2])
    assert np.array_equal(encoding.levels(X).sum(axis=1), bits.sum(axis=1))
    assert encoding.levels(X)[:, 2].max() == 0  # a constant column: one always-false bit
    again = ThresholdEncoding.from_dict(encoding.to_dict())
    assert np.array_equal(again.bits(X, [0, 1, 2]), bits)


def test_labels_keep_the_training_label_dtype(credit_data):
    X, y = credit_data["training"]
    model = ThermometerModel.train(X, y.astype(bool), PartyLayout(PARTY_LAYOUT), ModelSpec(3))
    assert model.predict(X[:5]).dtype == np.bool_


def test_a_tree_without_split_is_not_compilable(credit_data):
    X, y = credit_data["training"]
    with pytest.raises(NotCompilable):
        ThermometerModel.build(X, y, PartyLayout(PARTY_LAYOUT), ModelSpec(min_samples_leaf=len(y)))


@pytest.mark.parametrize(
    "X, y, error",
    [
        (np.ones((12, 15)), np.zeros(11, dtype=int), "one label per row"),
        (np.ones((12, 15)), np.zeros(12, dtype=int), "two classes"),
        (np.ones((12, 15)), np.linspace(0, 1, 12), "integer"),
        (np.ones((4, 15)), np.array([0, 1, 0, 1]), "At least 10"),
        (np.full((12, 15), np.nan), np.arange(12) % 2, "NaN"),
        (np.ones((12, 14)), np.arange(12) % 2, r"columns \[14\] do not exist"),
        (np.ones((12, 16)), np.arange(12) % 2, r"columns \[15\] belong to no party"),
    ],
)
def test_training_data_is_checked(X, y, error):
    with pytest.raises(ValueError, match=error):
        check_training_data(X, y, PartyLayout(PARTY_LAYOUT))


def test_selection_on_tiny_data_with_a_rare_class_picks_a_compilable_model():
    from anonymizer.service.selection import SelectionPolicy, select_model

    rng = np.random.default_rng(3)
    X = rng.normal(size=(31, 4))
    y = np.where(X[:, 0] > 0, 1, 0)
    y[0] = 2  # a class with a single row: no stratified split exists
    layout = PartyLayout.single(4)
    selection = select_model(X, y, layout, SelectionPolicy(), ThermometerModel)
    for params in selection.ranked:
        try:
            model = ThermometerModel.train(X, y, layout, params)
            break
        except NotCompilable:
            continue
    assert np.mean(model.predict(X) == y) > 0.6
    assert all(c["verdict"] for c in selection.summary()["candidates"])


def test_boosted_trees_decide_like_scikit_learns_booster_on_the_same_levels(credit_data):
    X, y = credit_data["training"]
    params = ModelSpec(2, min_samples_leaf=20, n_bits=4, n_estimators=5, boosted=True)
    model = ThermometerModel.build(X, y, PartyLayout(PARTY_LAYOUT), params)
    booster = GradientBoostingClassifier(
        n_estimators=5,
        learning_rate=BOOSTING_LEARNING_RATE,
        max_depth=2,
        min_samples_leaf=20,
        random_state=0,
    ).fit(model.encoding.levels(X), y)
    X_tune = credit_data["tuning"][0]
    reference = booster.decision_function(model.encoding.levels(X_tune))  # float log-odds
    outputs = model.outputs(X_tune)
    assert outputs.max() <= model.program.max_output <= 2**SCORE_BITS - 1
    probabilities = model.program.shares(outputs)[:, 1]
    log_odds = np.log(probabilities / (1 - probabilities))
    # rounding moves each tree's score and the shift by at most half a step
    bound = (params.n_estimators + 1) * 0.5 / model.program.score_scale
    assert np.max(np.abs(log_odds - reference)) <= bound + 1e-9
    clear_cut = np.abs(reference) > bound
    assert clear_cut.mean() > 0.3, clear_cut.mean()
    decisions = model.predict(X_tune)
    assert np.array_equal(decisions[clear_cut], (reference[clear_cut] > 0).astype(int))


def test_boosted_trees_serve_two_classes_only(credit_data):
    X, y = credit_data["training"]
    with pytest.raises(ValueError, match="two classes"):
        ThermometerModel.build(
            X, three_classes(X, y), PartyLayout(PARTY_LAYOUT), ModelSpec(2, n_estimators=5, boosted=True)
        )


def test_shares_decode_votes_and_scores_with_ties_to_the_first_class():
    votes = decode_shares([0, 2, 3], n_trees=3, n_classes=2)
    assert votes.tolist() == [[1, 0], [1 / 3, 2 / 3], [0, 1]]
    scores = decode_shares([5, 10, 15], n_trees=5, n_classes=2, score_shift=-10, score_scale=5.0)
    assert np.argmax(scores, axis=1).tolist() == [0, 0, 1]  # log-odds -1, 0 (a tie), +1
    assert scores[2, 1] == pytest.approx(1 / (1 + np.exp(-1)))
