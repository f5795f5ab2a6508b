"""Choose the tree: best held-out accuracy under a privacy guard and an FHE latency budget.

The challenge serves tuning features without labels, so utility is measured on a stratified
held-out part of the training data. Privacy: candidates must generalise (train minus held-out
accuracy <= `max_gap`) and keep at least `min_samples_leaf` rows per leaf, which bounds how much a
single training row can move a leaf's vote — the signal black-box membership attacks read.
Latency: the compiled circuit's programmable-bootstrapping count must stay within `max_pbs`.
"""

from dataclasses import asdict, dataclass, field

import numpy as np
from concrete.ml.sklearn import DecisionTreeClassifier
from sklearn.model_selection import train_test_split

from .config import SelectionPolicy, TreeParams
from .parties import PartyLayout

# rows used to compile candidates just to count their PBS (the count does not need all rows)
COST_PROBE_ROWS = 300


@dataclass
class Candidate:
    """One hyperparameter setting and what selection measured for it."""

    params: TreeParams
    holdout_accuracy: float
    train_accuracy: float
    pbs_count: int | None = None
    verdict: str = "not needed"
    leaves: int = 0

    @property
    def gap(self) -> float:
        return self.train_accuracy - self.holdout_accuracy

    def as_dict(self) -> dict:
        return {**asdict(self), "gap": round(self.gap, 4)}


@dataclass
class Selection:
    """The chosen parameters and the table of candidates."""

    chosen: TreeParams
    candidates: list[Candidate] = field(default_factory=list)
    budget_met: bool = True

    def summary(self) -> dict:
        return {
            "chosen": asdict(self.chosen),
            "budget_met": self.budget_met,
            "candidates": [c.as_dict() for c in self.candidates],
        }


def new_tree(params: TreeParams) -> DecisionTreeClassifier:
    """An unfitted concrete-ml tree with these hyperparameters."""
    return DecisionTreeClassifier(
        max_depth=params.max_depth,
        min_samples_leaf=params.min_samples_leaf,
        n_bits=params.n_bits,
        random_state=params.random_state,
    )


def _evaluate(params: TreeParams, X_fit, y_fit, X_hold, y_hold) -> tuple[Candidate, object]:
    model = new_tree(params).fit(X_fit, y_fit)
    candidate = Candidate(
        params=params,
        holdout_accuracy=float(np.mean(model.predict(X_hold) == y_hold)),
        train_accuracy=float(np.mean(model.predict(X_fit) == y_fit)),
        leaves=int(model.sklearn_model.get_n_leaves()),
    )
    return candidate, model


def _pbs_count(model, layout: PartyLayout, X_probe: np.ndarray) -> int:
    from .model import MultiPartyTree, rounding_bits  # model imports this module


    tree = MultiPartyTree(model, layout, rounding_bits(model._tree_inference), np.dtype(int))
    return int(tree.compile(X_probe).programmable_bootstrap_count)


def select_tree(
    X: np.ndarray, y: np.ndarray, layout: PartyLayout, policy: SelectionPolicy
) -> Selection:
    """Grid-search the policy's candidates; compile only the most accurate ones to price them."""
    X_fit, X_hold, y_fit, y_hold = train_test_split(
        X, y, test_size=policy.holdout_fraction, stratify=y, random_state=policy.random_state
    )
    evaluated = [
        _evaluate(TreeParams(d, leaf, bits, policy.random_state), X_fit, y_fit, X_hold, y_hold)
        for d in policy.max_depths
        for leaf in policy.min_samples_leafs
        for bits in policy.n_bits
    ]
    evaluated.sort(key=lambda pair: (-pair[0].holdout_accuracy, pair[0].leaves))
    candidates = [candidate for candidate, _ in evaluated]
    feasible: list[Candidate] = []
    over_budget: list[Candidate] = []
    for candidate, model in evaluated:
        best = feasible[0].holdout_accuracy if feasible else None
        if best is not None and candidate.holdout_accuracy < best - policy.accuracy_tolerance:
            break
        if candidate.gap > policy.max_gap:
            candidate.verdict = f"rejected: generalisation gap {candidate.gap:.3f} > {policy.max_gap}"
            continue
        # PBS grow with leaves and bits: no need to compile what is costlier than a known miss
        costlier = next((c for c in over_budget if c.leaves <= candidate.leaves
                         and c.params.n_bits <= candidate.params.n_bits), None)  # fmt: skip
        if costlier is not None:
            candidate.verdict = f"rejected: costlier than {costlier.pbs_count} PBS > budget"
            continue
        candidate.pbs_count = _pbs_count(model, layout, X_fit[:COST_PROBE_ROWS])
        if candidate.pbs_count > policy.max_pbs:
            candidate.verdict = f"rejected: {candidate.pbs_count} PBS > budget {policy.max_pbs}"
            over_budget.append(candidate)
            continue
        candidate.verdict = "feasible"
        feasible.append(candidate)
    if feasible:
        chosen = min(feasible, key=lambda c: (c.pbs_count, -c.holdout_accuracy))
        chosen.verdict = "chosen"
        return Selection(chosen.params, candidates, budget_met=True)
    # nothing fits the budget: the cheapest private tree, and say so
    cheapest = min(candidates, key=lambda c: (c.leaves, c.params.n_bits, -c.holdout_accuracy))
    cheapest.verdict = "chosen (over budget: no candidate met it)"
    return Selection(cheapest.params, candidates, budget_met=False)
