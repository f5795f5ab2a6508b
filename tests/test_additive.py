"""The additive family (engines/thermometer/scoresum.py): integer points that follow the fitted
regression, one lookup per class score, and selection that offers them beside trees."""

import json

import numpy as np
import pytest
from engine_cases import three_classes
from sklearn.linear_model import LogisticRegression

from anonymizer.config import Config
from anonymizer.engines.thermometer.model import ThermometerModel
from anonymizer.engines.thermometer.scoresum import _bounded_logistic
from anonymizer.parties import PartyLayout
from anonymizer.service.selection import SelectionPolicy, budget_seconds, select_model
from anonymizer.settings import ModelSpec
from challenge_stub.dataset import PARTY_LAYOUT


@pytest.fixture(scope="module")
def layout():
    return PartyLayout(PARTY_LAYOUT)


def stacked_bits(model, X):
    return np.concatenate(model.party_bits(X), axis=1)


def test_points_follow_the_regression_up_to_rounding(credit_data, layout):
    X, y = credit_data["training"]
    params = ModelSpec(n_bits=4, additive=True, regularization=0.1, score_bits=6)
    model = ThermometerModel.build(X, y, layout, params)
    regression = LogisticRegression(C=0.1, max_iter=2000).fit(stacked_bits(model, X), y)
    X_tune = credit_data["tuning"][0]
    reference = regression.decision_function(stacked_bits(model, X_tune))
    outputs = model.outputs(X_tune)
    assert outputs.shape == (len(X_tune), 1) and 0 <= outputs.min() and outputs.max() < 2**6
    shares = model.program.shares(outputs)[:, 1]
    log_odds = np.log(shares / (1 - shares))
    # each column's points and the shift move by at most half a point
    bound = (layout.n_features + 1) * 0.5 / model.program.score_scale
    assert np.max(np.abs(log_odds - reference)) <= bound + 1e-9
    clear_cut = np.abs(reference) > bound
    assert clear_cut.mean() > 0.3
    assert np.array_equal(model.predict(X_tune)[clear_cut], (reference[clear_cut] > 0).astype(int))


def test_many_classes_get_one_score_each_and_the_largest_wins(credit_data, layout):
    X, y = credit_data["training"]
    labels = three_classes(X, y)
    model = ThermometerModel.train(X, labels, layout, ModelSpec(n_bits=4, additive=True, score_bits=5))
    assert model.info["pbs_count"] == 3 == model.program.n_lookups
    X_tune, y_tune = credit_data["tuning"]
    outputs = model.outputs(X_tune)
    assert outputs.shape == (len(X_tune), 3)
    assert np.array_equal(model.predict(X_tune), model.classes[np.argmax(outputs, axis=1)])
    assert np.allclose(model.program.shares(outputs).sum(axis=1), 1.0)
    assert np.mean(model.predict(X_tune) == three_classes(X_tune, y_tune)) > 0.6


def test_linear_points_give_every_bit_of_a_column_one_weight(credit_data, layout):
    X, y = credit_data["training"]
    model = ThermometerModel.build(X, y, layout, ModelSpec(n_bits=4, additive=True, linear=True))
    # before rounding a column's steps are equal; after rounding its cumulative points, by at most one
    stacked = np.concatenate(model.program.weights)[:, 0]
    starts = np.cumsum([0] + model.program.column_sizes)
    for a, b in zip(starts[:-1], starts[1:]):
        assert np.ptp(stacked[a:b]) <= 1


def test_budget_in_seconds_scales_with_the_classes():
    policy = SelectionPolicy()
    assert budget_seconds(policy, 2) == policy.max_seconds
    assert budget_seconds(policy, 10) == pytest.approx(5 * policy.max_seconds)


def test_an_additive_signal_chooses_an_additive_model_with_one_lookup():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(3000, 6))
    y = (X[:, 0] + X[:, 1] - X[:, 2] + X[:, 3] + rng.logistic(scale=0.3, size=3000) > 0).astype(np.int64)
    policy = SelectionPolicy(max_depths=(2, 3), min_samples_leafs=(50,), n_bits=(4,), forest_sizes=(3,))
    selection = select_model(X, y, PartyLayout.single(6), policy, ThermometerModel)
    chosen = next(c for c in selection.candidates if c.verdict.startswith("chosen"))
    assert chosen.params.additive and chosen.pbs_count == 1
    best_tree = max(c.cv_accuracy for c in selection.candidates if not c.params.additive)
    assert chosen.cv_accuracy > best_tree + 0.015
    # utility first: 6-bit scores exceed the two-class budget at their measured cost, and are served
    # anyway where the 4-5-bit ones lose more than a point (the answer says so)
    best = max(c.cv_accuracy for c in selection.candidates if c.pbs_count is not None)
    assert chosen.cv_accuracy >= best - policy.max_accuracy_loss
    assert (chosen.params.score_bits == 6) == (selection.over_budget is not None) != selection.budget_met
    table = selection.summary()["candidates"]
    assert all(0.5 < row["cv_auc"] <= 1 for row in table if row["cv_auc"] is not None)
    row = next(r for r in table if r["verdict"].startswith("chosen"))
    assert row["cv_gini"] == pytest.approx(2 * row["cv_auc"] - 1, abs=1e-3) and 0 < row["cv_ks"] <= 1
    assert selection.summary()["chosen_measures"]["cv_auc"] == row["cv_auc"]


def test_many_classes_report_no_ranking_measures(credit_data, layout):
    X, y = credit_data["training"]
    policy = SelectionPolicy(
        max_depths=(2,), min_samples_leafs=(50,), n_bits=(4,), forest_sizes=(), regularizations=(0.1,)
    )
    selection = select_model(X[:600], three_classes(X, y)[:600], layout, policy, ThermometerModel)
    assert all(row["cv_auc"] is None for row in selection.summary()["candidates"])


def test_the_bounded_solver_is_scikit_learns_objective():
    features = np.random.default_rng(3).normal(size=(800, 6))
    labels = (features[:, 0] - features[:, 1] + np.random.default_rng(4).logistic(size=800) > 0).astype(int)
    free = np.zeros(6, dtype=int)
    coefficients, intercept = _bounded_logistic(features, labels, 0.1, free)
    reference = LogisticRegression(C=0.1, max_iter=2000).fit(features, labels)
    assert np.allclose(coefficients, reference.coef_, atol=1e-3)
    assert np.allclose(intercept, reference.intercept_, atol=1e-3)


@pytest.mark.parametrize("linear", [False, True])
def test_monotone_columns_never_lose_points_as_they_grow(credit_data, layout, linear):
    X, y = credit_data["training"]
    free = ThermometerModel.build(X, y, layout, ModelSpec(n_bits=4, additive=True, linear=linear))
    order = [c for columns in layout.columns.values() for c in columns]
    stacked = np.concatenate(free.program.weights)[:, 0]
    starts = np.cumsum([0] + free.program.column_sizes)
    falling = [c for c, a, b in zip(order, starts[:-1], starts[1:]) if (stacked[a:b] < 0).any()]
    assert falling, "some column's free points fall somewhere: the constraint has work to do"
    params = ModelSpec(n_bits=4, additive=True, linear=linear, monotone=tuple((c, 1) for c in falling))
    bound = ThermometerModel.build(X, y, layout, params)
    stacked = np.concatenate(bound.program.weights)[:, 0]
    for c, a, b in zip(order, starts[:-1], starts[1:]):
        if c in falling:
            assert (stacked[a:b] >= 0).all()
    X_tune, y_tune = credit_data["tuning"]
    assert np.mean(bound.predict(X_tune) == y_tune) > np.mean(y_tune == np.bincount(y_tune).argmax())


def test_monotone_points_refuse_many_classes(credit_data, layout):
    X, y = credit_data["training"]
    with pytest.raises(ValueError, match="two classes"):
        ThermometerModel.build(X, three_classes(X, y), layout, ModelSpec(additive=True, monotone=((0, 1),)))


def test_monotone_columns_are_read_by_name_or_index():
    names = json.dumps(["income", "debts", "age"])
    config = Config.from_env({"FEATURE_NAMES": names, "ADDITIVE_MONOTONE": '{"income": 1, "1": -1}'})
    assert config.tree.monotone == ((0, 1), (1, -1)) == config.selection.monotone
    with pytest.raises(ValueError, match="ADDITIVE_MONOTONE"):
        Config.from_env({"FEATURE_NAMES": names, "ADDITIVE_MONOTONE": '{"height": 1}'})
    with pytest.raises(ValueError, match="ADDITIVE_MONOTONE"):
        Config.from_env({"ADDITIVE_MONOTONE": '{"0": 2}'})


def test_six_bit_scores_are_priced_as_the_larger_lookups_they_are(credit_data, layout):
    X, y = credit_data["training"]
    wide, narrow = (
        ThermometerModel.build(X, y, layout, ModelSpec(n_bits=4, additive=True, score_bits=bits)).compile(
            X[:200]
        )
        for bits in (6, 5)
    )
    # concrete picks polynomial size 4096 for a 6-bit lookup, 2048 for 5 bits (measured: 2x the time)
    assert wide.wide_lookups == 1 and narrow.wide_lookups == 0
