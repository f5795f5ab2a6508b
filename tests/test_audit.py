"""The membership-inference audit, run for real (ART black-box attacks through WebClassifier)."""

from anonymizer.audit import SETTINGS, run


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
    assert results[served_name]["utility"]["tuning"] >= results[unconstrained_name]["utility"]["tuning"] - 0.01
