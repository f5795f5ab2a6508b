"""The membership-inference audit, run for real (ART black-box attacks through WebClassifier)."""

import pytest

from devtools.audit import SETTINGS, advantage_interval, run


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
