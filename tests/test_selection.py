"""Model selection: the cross-validated privacy guard and the fallback never below the majority."""

import numpy as np
import pytest

from anonymizer.engines.thermometer.model import ThermometerModel
from anonymizer.parties import PartyLayout
from anonymizer.service.selection import (
    MAJORITY,
    Candidate,
    SelectionPolicy,
    _cheapest_first,
    candidate_grid,
    estimate_seconds,
    select_model,
)
from anonymizer.service.training import Anonymizer
from anonymizer.settings import ModelSpec

SMALL_GRID = SelectionPolicy(max_depths=(2, 6), min_samples_leafs=(1, 50), n_bits=(6,), forest_sizes=())


def noisy_threshold_data(n: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] > 0).astype(np.int64)
    flip = rng.random(n) < noise
    return X, np.where(flip, 1 - y, y)


def test_overfitting_candidates_are_rejected_by_the_cross_validated_advantage_bound():
    X, y = noisy_threshold_data(2000, noise=0.2)
    selection = select_model(X, y, PartyLayout.single(4), SMALL_GRID, ThermometerModel)
    by_label = {c.params.label(): c for c in selection.candidates}
    memorising = by_label["tree depth 6, leaf >= 1, 6 bits"]
    assert memorising.gap > 0.05 and memorising.advantage_bound > SMALL_GRID.max_advantage
    assert not memorising.verdict.startswith(("chosen", "feasible"))
    chosen = next(c for c in selection.candidates if c.verdict == "chosen")
    assert chosen.advantage_bound <= SMALL_GRID.max_advantage
    assert chosen.cv_accuracy > selection.majority_accuracy
    assert selection.fallback is None and selection.summary()["cross_validation"].startswith("4-fold")


def test_when_only_memorising_models_are_accurate_the_most_private_is_served_and_flagged():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(800, 3))
    y = ((X > 0).sum(axis=1) % 2).astype(np.int64)  # parity: no shallow tree beats chance
    y = np.where(rng.random(800) < 0.1, 1 - y, y)
    policy = SelectionPolicy(max_depths=(1, 7), min_samples_leafs=(1, 5), n_bits=(4,), forest_sizes=())
    selection = select_model(X, y, PartyLayout.single(3), policy, ThermometerModel)
    assert all(c.advantage_bound > policy.max_advantage for c in selection.candidates)
    beating = [c for c in selection.candidates if c.cv_accuracy > selection.majority_accuracy]
    chosen = [c for c in selection.candidates if c.verdict.startswith("chosen")]
    assert len(chosen) == 1 and "membership-advantage bound" in chosen[0].verdict
    assert chosen[0].advantage_bound == min(c.advantage_bound for c in beating)
    assert selection.fallback and selection.ranked[-1] == MAJORITY


def test_labels_without_signal_fall_back_to_the_majority_class(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    y = (rng.random(300) < 0.7).astype(np.int64)  # no feature says anything about y
    selection = select_model(X, y, PartyLayout.single(3), SMALL_GRID, ThermometerModel)
    assert selection.ranked[-1] == MAJORITY
    assert selection.fallback and "majority" in selection.fallback
    assert all(
        not c.verdict.startswith("chosen") or c.cv_accuracy > selection.majority_accuracy
        for c in selection.candidates
    )


def test_the_majority_predictor_is_a_real_circuit_with_constant_output():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 3))
    y = np.array([0] * 15 + [1] * 10 + [2] * 35)
    model = ThermometerModel.train(X, y, PartyLayout({"a": [0, 2], "b": [1]}), MAJORITY)
    # concrete folds the constant table: no bootstrap, the output is an encryption of the constant
    assert model.info["hyperparameters"]["model"] == "majority" and model.info["pbs_count"] == 0
    assert set(model.predict(rng.normal(size=(50, 3)))) == {2}
    assert np.array_equal(model.execute(X[:2]), np.array([2, 2]))


def test_anonymizer_serves_majority_and_says_so_when_nothing_beats_it(tmp_path, caplog):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3))
    y = (rng.random(200) < 0.8).astype(np.int64)

    class Store:
        pointer_path = tmp_path / "current.json"

    anonymizer = Anonymizer(None, ModelSpec(), Store(), SMALL_GRID)
    with caplog.at_level("WARNING"):
        anonymizer.fit(X, y)
    assert "fell back" in caplog.text
    assert (anonymizer.predict(X) == 1).mean() >= 0.8  # at least the majority's accuracy


@pytest.mark.parametrize("folds, message", [(4, "4-fold stratified"), (2, "2-fold stratified")])
def test_rare_classes_lower_the_number_of_folds(folds, message):
    X, y = noisy_threshold_data(100, noise=0.0)
    y[: 100 - folds] = 0
    y[100 - folds :] = 1  # the rarer class has `folds` rows
    policy = SelectionPolicy(max_depths=(2,), min_samples_leafs=(1,), n_bits=(4,), forest_sizes=())
    assert message in select_model(X, y, PartyLayout.single(4), policy, ThermometerModel).folds


def test_grid_offers_boosted_trees_for_two_classes_only():
    policy = SelectionPolicy()
    binary = candidate_grid(policy, 5000, ensembles=True, n_classes=2)
    three = candidate_grid(policy, 5000, ensembles=True, n_classes=3)
    assert {p.family for p in binary} == {"tree", "forest", "boosted"}
    assert {p.family for p in three} == {"tree", "forest"}
    assert {p.family for p in candidate_grid(policy, 5000, ensembles=False)} == {"tree"}
    with_additive = candidate_grid(policy, 5000, ensembles=True, n_classes=3, additive=True)
    assert {p.family for p in with_additive} == {"tree", "forest", "additive"}
    widths = {p.score_bits for p in with_additive if p.additive}
    assert widths == set(policy.score_bits)
    assert all(p.max_depth <= 3 and p.n_estimators in policy.boosted_sizes for p in binary if p.boosted)


def test_boosted_candidates_are_priced_by_their_circuit_and_can_win():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(6000, 4))
    # an additive signal over three features: several shallow trees beat one tree of the same depth
    score = X[:, 0] + X[:, 1] + X[:, 2]
    y = (score + rng.logistic(scale=0.4, size=6000) > 0).astype(np.int64)
    policy = SelectionPolicy(
        max_depths=(2,),
        min_samples_leafs=(50,),
        n_bits=(4,),
        forest_sizes=(),
        boosted_sizes=(5,),
        regularizations=(),  # trees only: an additive model fits this signal exactly
    )
    selection = select_model(X, y, PartyLayout.single(4), policy, ThermometerModel)
    by_family = {c.params.family: c for c in selection.candidates}
    assert by_family["boosted"].cv_accuracy > by_family["tree"].cv_accuracy + 0.03
    assert selection.chosen.boosted and selection.fallback is None
    # priced by its compiled circuit: one lookup per depth-2 tree (three nodes fit one 3-bit block)
    assert by_family["boosted"].pbs_count == 5 and by_family["boosted"].seconds <= policy.max_seconds


def test_utility_first_the_latency_budget_may_cost_at_most_a_point_of_accuracy():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(6000, 4))
    y = (X[:, 0] + X[:, 1] + X[:, 2] + rng.logistic(scale=0.4, size=6000) > 0).astype(np.int64)
    grid = dict(max_depths=(2,), min_samples_leafs=(50,), n_bits=(4,), forest_sizes=(), boosted_sizes=(5,))
    grid["regularizations"] = ()  # trees only: a cheap tree, and boosted trees clearly more accurate
    priced = select_model(X, y, PartyLayout.single(4), SelectionPolicy(**grid), ThermometerModel)
    by_family = {c.params.family: c for c in priced.candidates}
    tree, boosted = by_family["tree"], by_family["boosted"]
    compiled = ThermometerModel.build(X, y, PartyLayout.single(4), tree.params).compile(X[:300])
    tree_seconds = estimate_seconds(compiled.complexity, compiled.input_bytes, compiled.wide_lookups)
    assert boosted.cv_accuracy > tree.cv_accuracy + 0.03 and tree_seconds < boosted.seconds
    between = (tree_seconds + boosted.seconds) / 2  # the tree fits the budget, boosted trees do not

    tight = select_model(
        X, y, PartyLayout.single(4), SelectionPolicy(**grid, max_seconds=between), ThermometerModel
    )
    assert tight.chosen.boosted and not tight.budget_met
    served = next(c for c in tight.candidates if c.verdict.startswith("chosen"))
    assert served.advantage_bound <= SelectionPolicy().max_advantage  # over budget, never over the bound
    summary = tight.summary()
    assert summary["over_budget"]["budget"] == pytest.approx(between, abs=1e-4)
    assert summary["over_budget"]["chosen"] > summary["over_budget"]["budget"]
    assert summary["over_budget"]["best_within_budget_cv_accuracy"] == pytest.approx(
        tree.cv_accuracy, abs=1e-4
    )
    assert "over the latency budget" in tight.fallback and "loses" in tight.fallback

    # where the budget costs less than the allowed loss, it holds
    lenient = SelectionPolicy(**grid, max_seconds=between, max_accuracy_loss=0.2)
    held = select_model(X, y, PartyLayout.single(4), lenient, ThermometerModel)
    assert held.chosen.family == "tree" and held.budget_met and held.summary()["over_budget"] is None


def test_priced_candidates_show_their_key_and_of_equal_cost_the_smaller_key_is_served():
    X, y = noisy_threshold_data(1500, noise=0.1)
    policy = SelectionPolicy(
        max_depths=(),
        forest_sizes=(),
        boosted_sizes=(),
        regularizations=(0.03,),
        score_bits=(3, 6),
        accuracy_tolerance=1.0,  # price every candidate
    )
    selection = select_model(X, y, PartyLayout.single(4), policy, ThermometerModel)
    binned = {c.params.score_bits: c for c in selection.candidates if not c.params.linear}
    assert binned[6].key_bytes > binned[3].key_bytes > 0  # a wider lookup needs larger keys
    assert binned[6].as_dict()["evaluation_key_mb"] == round(binned[6].key_bytes / 1e6, 1)
    # the same estimated seconds: the smaller key ranks first
    small, large = (Candidate(ModelSpec(), seconds=0.1, key_bytes=b) for b in (12_000_000, 26_000_000))
    assert sorted([large, small], key=_cheapest_first) == [small, large]
