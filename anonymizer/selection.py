"""Choose the model: best held-out accuracy under a privacy guard and an FHE latency budget.

The challenge serves tuning features without labels, so utility is measured on a stratified
held-out part of the training data. Privacy: candidates must generalise (train minus held-out
accuracy <= `max_gap`) and keep at least `min_samples_leaf` rows per leaf, which bounds how much a
single training row can move a leaf's vote — the signal black-box membership attacks read.
Latency: each candidate is compiled by the served engine and priced from its circuit's
complexity (`estimate_seconds`); it must stay within `max_seconds` (thermometer engine) or
`max_pbs` programmable bootstraps (concrete-ml engine). Candidates that cannot be built or
compiled are skipped with their reason; selection never proposes one of them.
"""

from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.model_selection import train_test_split

from .config import SelectionPolicy, TreeParams
from .parties import PartyLayout

# rows used to compile candidates just to price them (the price does not need all rows)
COST_PROBE_ROWS = 300
# candidates compiled at most: the grid is sorted by accuracy, so the rest are less accurate
MAX_PRICED = 16
# measured on 2 cores through HTTP (`make bench`): seconds = FIXED + PER_COMPLEXITY * complexity
FIXED_SECONDS = 0.05
SECONDS_PER_COMPLEXITY = 2.5e-10


def estimate_seconds(complexity: float) -> float:
    """Encrypted latency of a circuit of this complexity on the reference machine."""
    return FIXED_SECONDS + SECONDS_PER_COMPLEXITY * complexity


@dataclass
class Candidate:
    """One hyperparameter setting and what selection measured for it."""

    params: TreeParams
    holdout_accuracy: float = 0.0
    train_accuracy: float = 0.0
    pbs_count: int | None = None
    seconds: float | None = None
    verdict: str = "not needed"

    @property
    def gap(self) -> float:
        return self.train_accuracy - self.holdout_accuracy

    def as_dict(self) -> dict:
        return {
            "model": self.params.label(),
            "params": asdict(self.params),
            "holdout_accuracy": round(self.holdout_accuracy, 4),
            "train_accuracy": round(self.train_accuracy, 4),
            "gap": round(self.gap, 4),
            "pbs_count": self.pbs_count,
            "estimated_seconds": None if self.seconds is None else round(self.seconds, 4),
            "verdict": self.verdict,
        }


@dataclass
class Selection:
    """The parameters to train, best first, and the table of candidates."""

    ranked: list[TreeParams]
    candidates: list[Candidate] = field(default_factory=list)
    budget_met: bool = True

    @property
    def chosen(self) -> TreeParams:
        return self.ranked[0]

    def summary(self) -> dict:
        return {
            "chosen": asdict(self.chosen),
            "budget_met": self.budget_met,
            "candidates": [c.as_dict() for c in self.candidates],
        }


def candidate_grid(policy: SelectionPolicy, n_rows: int, forests: bool) -> list[TreeParams]:
    """The policy's settings that make sense for `n_rows` fitting rows."""
    # a leaf floor above an eighth of the rows leaves almost no tree to learn
    floors = [f for f in policy.min_samples_leafs if f <= n_rows / 8] or [max(1, n_rows // 8)]
    sizes = (1, *policy.forest_sizes) if forests else (1,)
    return [
        TreeParams(depth, floor, bits, policy.random_state, n_estimators=size)
        for size in sizes
        for depth in policy.max_depths
        for floor in floors
        for bits in policy.n_bits
    ]


def _within_budget(candidate: Candidate, policy: SelectionPolicy, engine) -> bool:
    if engine.engine == "concrete-ml":
        return candidate.pbs_count <= policy.max_pbs
    return candidate.seconds <= policy.max_seconds


def _budget_text(policy: SelectionPolicy, engine) -> str:
    if engine.engine == "concrete-ml":
        return f"{policy.max_pbs} PBS"
    return f"{policy.max_seconds} s"


def _measure(engine, params, layout, X_fit, y_fit, X_hold, y_hold) -> tuple[Candidate, object]:
    candidate = Candidate(params)
    try:
        model = engine.build(X_fit, y_fit, layout, params)
    except ValueError as error:  # NotCompilable and scikit-learn's refusals
        candidate.verdict = f"skipped: {error}"
        return candidate, None
    candidate.holdout_accuracy = float(np.mean(model.predict(X_hold) == y_hold))
    candidate.train_accuracy = float(np.mean(model.predict(X_fit) == y_fit))
    return candidate, model


def _price(candidate: Candidate, model, X_probe: np.ndarray) -> bool:
    """Compile to price; False (with the reason as verdict) if the circuit does not compile."""
    try:
        circuit = model.compile(X_probe)
    except Exception as error:  # concrete raises RuntimeError, ValueError, AssertionError, ...
        candidate.verdict = f"skipped: does not compile ({type(error).__name__}: {str(error)[:200]})"
        return False
    candidate.pbs_count = int(circuit.programmable_bootstrap_count)
    candidate.seconds = estimate_seconds(float(circuit.complexity))
    return True


def holdout_split(X: np.ndarray, y: np.ndarray, policy: SelectionPolicy):
    """A stratified held-out part; plain random when a class is too rare to stratify."""
    try:
        return train_test_split(
            X, y, test_size=policy.holdout_fraction, stratify=y, random_state=policy.random_state
        )
    except ValueError:
        return train_test_split(X, y, test_size=policy.holdout_fraction, random_state=policy.random_state)


def select_model(
    X: np.ndarray, y: np.ndarray, layout: PartyLayout, policy: SelectionPolicy, engine
) -> Selection:
    """Grid-search the candidates; compile only the most accurate ones to price them."""
    X_fit, X_hold, y_fit, y_hold = holdout_split(X, y, policy)
    grid = candidate_grid(policy, len(y_fit), forests=engine.engine != "concrete-ml")
    measured = [_measure(engine, p, layout, X_fit, y_fit, X_hold, y_hold) for p in grid]
    candidates = [c for c, _ in measured]
    usable = sorted(
        ((c, m) for c, m in measured if m is not None),
        key=lambda pair: (-pair[0].holdout_accuracy, pair[0].params.n_estimators,
                          pair[0].params.max_depth or 99, pair[0].params.n_bits),
    )
    feasible: list[Candidate] = []
    priced_or_private: list[Candidate] = []
    priced = 0
    for candidate, model in usable:
        best = feasible[0].holdout_accuracy if feasible else None
        if best is not None and candidate.holdout_accuracy < best - policy.accuracy_tolerance:
            break
        if candidate.gap > policy.max_gap:
            candidate.verdict = f"rejected: generalisation gap {candidate.gap:.3f} > {policy.max_gap}"
            continue
        if priced >= MAX_PRICED:
            candidate.verdict = "not priced: enough candidates compiled"
            continue
        priced += 1
        if not _price(candidate, model, X_fit[:COST_PROBE_ROWS]):
            continue
        priced_or_private.append(candidate)
        if not _within_budget(candidate, policy, engine):
            candidate.verdict = f"rejected: over the latency budget {_budget_text(policy, engine)}"
            continue
        candidate.verdict = "feasible"
        feasible.append(candidate)
    if feasible:
        ranked = sorted(feasible, key=lambda c: (c.seconds or c.pbs_count, -c.holdout_accuracy))
        ranked[0].verdict = "chosen"
        return Selection([c.params for c in ranked], candidates, budget_met=True)
    if priced_or_private:
        # nothing within the budget: the cheapest compiled private candidate, and say so
        ranked = sorted(priced_or_private, key=lambda c: (c.seconds or c.pbs_count))
        ranked[0].verdict = "chosen (over budget: no private candidate met it)"
        return Selection([c.params for c in ranked], candidates, budget_met=False)
    fallbacks = [c for c, _ in usable] or candidates
    fallback = min(fallbacks, key=lambda c: (c.params.n_estimators, c.params.max_depth or 99))
    fallback.verdict = "chosen (fallback: no candidate passed the privacy guard and compiled)"
    return Selection([fallback.params], candidates, budget_met=False)
