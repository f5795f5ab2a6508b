"""The membership-inference audit, run for real (ART black-box attacks through WebClassifier)."""

import numpy as np
import pytest

from challenge_stub.app import evaluate_attack, rebuilt_challenge
from devtools.audit import FPR_LEVELS, SETTINGS, advantage_interval, low_fpr_rates, run, tpr_at_fpr


def test_served_model_leaks_far_less_than_the_unconstrained_tree():
    settings = {name: env for name, env in SETTINGS.items() if not name.startswith("fixed")}
    served_name, unconstrained_name = settings
    results = run(2000, settings, out=None, log=lambda line: None)
    served = results[served_name]["attacks"]
    unconstrained = results[unconstrained_name]["attacks"]
    assert set(served) == {"rf", "gb", "gap"}
    assert len(served["rf"]["runs"]) == len(served["gb"]["runs"]) == 3 and len(served["gap"]["runs"]) == 1
    low, high = served["gap"]["advantage_ci95"]
    assert low <= served["gap"]["mean_advantage"] <= high
    worst_served = max(a["mean_advantage"] for a in served.values())
    weakest_unconstrained = min(a["mean_advantage"] for a in unconstrained.values())
    assert weakest_unconstrained > 0.1, "the reference tree should be clearly attackable"
    assert worst_served < weakest_unconstrained - 0.1
    assert (
        results[served_name]["utility"]["tuning"] >= results[unconstrained_name]["utility"]["tuning"] - 0.01
    )
    # the same attacks against a constant predictor: what the member/non-member draw gives away
    baseline = results[served_name]["baseline"]
    assert set(baseline) == {"rf", "gb", "gap"}
    assert all(
        b["advantage_ci95"][0] <= b["mean_advantage"] <= b["advantage_ci95"][1] for b in baseline.values()
    )
    assert weakest_unconstrained > max(b["advantage_ci95"][1] for b in baseline.values())
    # the field's measure beside it: TPR at 1 % and 10 % FPR, for every attack and its baseline, on
    # the rows the challenge evaluated (low_fpr_rates raised otherwise)
    for table in (served, unconstrained, baseline):
        for row in table.values():
            low_rate, high_rate = (row["mean_tpr_at_fpr"][str(level)] for level in FPR_LEVELS)
            assert 0.0 <= low_rate <= high_rate <= 1.0


def evaluation(tpr, fpr):
    return {"tpr": tpr, "fpr_nonmembers": fpr, "advantage": tpr - fpr}


def test_advantage_interval_counts_each_split_once_and_never_collapses():
    one_seed = [{"tuning": evaluation(0.6, 0.5), "validation": evaluation(0.7, 0.5)}]
    low, high = advantage_interval(one_seed, rows_per_class=100)
    assert low < 0.15 < high and high - low == pytest.approx(2 * 1.96 * 0.0479, abs=0.001)
    # more seeds scored on the same rows are not more evidence
    assert advantage_interval(one_seed * 3, rows_per_class=100) == pytest.approx((low, high))
    certain = [{"tuning": evaluation(1.0, 1.0), "validation": evaluation(1.0, 1.0)}]
    low, high = advantage_interval(certain, rows_per_class=5)
    assert low < -0.1 and high > 0.1  # five rows per class cannot give a tight interval


def test_tpr_at_a_low_fpr_reads_the_roc_of_the_scores():
    members = np.array([True] * 10 + [False] * 10)
    scores = np.r_[np.arange(5, 15), np.arange(0, 10)]  # members 5..14, non-members 0..9
    assert tpr_at_fpr(members, scores, 0.0) == 0.5  # at 10 and above: five members, no non-member
    assert tpr_at_fpr(members, scores, 0.1) == 0.6  # at 9: six members, one non-member in ten
    assert tpr_at_fpr(members, scores, 0.05) == 0.5
    # a label-only attack has one threshold: below its own FPR it finds nobody
    decisions = np.r_[np.ones(8), np.zeros(2), np.ones(3), np.zeros(7)]
    assert tpr_at_fpr(members, decisions, 0.1) == 0.0 and tpr_at_fpr(members, decisions, 0.3) == 0.8


class Guess:
    """An attack that calls a row a member iff its first feature is above the median."""

    def infer_memberships(self, X, y):
        return X[:, 0] > np.median(X[:, 0])

    def scores(self, X, y):
        return X[:, 0]


def test_the_rebuilt_challenge_draws_the_rows_the_challenge_evaluated():
    info = {"dataset": "credit", "rows": 2000, "seed": 0}
    challenge = rebuilt_challenge(info)
    dataset, members = challenge.MIA_evaluation_data(anonymizer="a", deanonymizer="d", data_split="tuning")
    X, y = dataset.get()
    evaluation = evaluate_attack(Guess().infer_memberships(X, y), np.asarray(members, dtype=bool))
    rates = low_fpr_rates(rebuilt_challenge(info), "a", "d", Guess(), "tuning", evaluation)
    assert set(rates) == {str(level) for level in FPR_LEVELS}
    with pytest.raises(RuntimeError, match="not the one the challenge evaluated"):
        low_fpr_rates(rebuilt_challenge(info), "a", "another attack", Guess(), "tuning", evaluation)
