"""Choose the model: best cross-validated accuracy under a privacy guard and an FHE latency budget.

The challenge serves tuning features without labels, so utility is estimated on the training data
by repeated stratified k-fold cross-validation (mean and spread over the folds). Privacy: the
label-only gap attack ("member iff the model labels the row correctly") has an advantage equal to
the model's generalisation gap, train minus held-out accuracy; its cross-validated mean plus one
standard error must stay within `max_advantage`, so a noisy estimate is not taken at face value.
Leaf floors bound how much one row can sway a leaf's vote. Candidates: single trees, random forests,
(two classes) gradient-boosted trees and, where the engine computes them, additive models (points
per bin: L2-regularised logistic regression on the bits, rounded to integer scores). Latency: the
most accurate candidates are compiled by the served engine and priced from their circuit's
complexity (`estimate_seconds`); a K-class decision needs K scores, so the budget in seconds
scales with the classes (`budget_seconds`). Two classes: the table also reports AUC, Gini and KS.
Candidates no better than always answering the majority class are never chosen; when nothing
passes every guard, the fallback says why, and at worst serves the majority class itself.
"""

import logging
import statistics
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold

from ..parties import PartyLayout
from ..settings import ModelSpec, SelectionPolicy

_logger = logging.getLogger(__name__)

# rows used to compile candidates just to price them (the price does not need all rows)
COST_PROBE_ROWS = 300
# candidates compiled at most: they are tried in order of accuracy, so the rest are less accurate
MAX_PRICED = 24
# fitted to `make bench`'s warm p50s through HTTP on 2 cores: a fixed part, the circuit's complexity
# and the inputs the server deserializes (each party's encrypted bits)
FIXED_SECONDS = 0.055
SECONDS_PER_COMPLEXITY = 1.76e-10
SECONDS_PER_INPUT_BYTE = 3.65e-6
# a lookup at polynomial size >= 4096 (6-bit scores) runs ~0.06 s longer than its complexity
# says (`make bench`: the 6-bit additive circuits' residual; one bare 6-bit lookup 0.21 s, 5-bit 0.10 s)
SECONDS_PER_LARGE_LOOKUP = 0.06
MAJORITY = ModelSpec(majority=True)


def budget_seconds(policy: SelectionPolicy, n_classes: int) -> float:
    """The latency budget of a K-class decision: `max_seconds` per two classes' worth of scores
    (an additive model computes one score per class), so no K leaves only useless models."""
    return policy.max_seconds * max(1.0, n_classes / 2)


def estimate_seconds(complexity: float, input_bytes: float, large_lookups: int = 0) -> float:
    """Encrypted latency of a circuit on the reference machine (`large_lookups`: its lookups at
    a large polynomial size, `Compiled.wide_lookups`)."""
    return (
        FIXED_SECONDS
        + SECONDS_PER_COMPLEXITY * complexity
        + SECONDS_PER_INPUT_BYTE * input_bytes
        + SECONDS_PER_LARGE_LOOKUP * large_lookups
    )


@dataclass
class Candidate:
    """One hyperparameter setting and what selection measured for it."""

    params: ModelSpec
    cv_accuracy: float = 0.0
    cv_accuracy_sd: float = 0.0
    train_accuracy: float = 0.0
    gap: float = 0.0  # the gap attack's advantage, mean over folds
    gap_se: float = 0.0
    auc: float | None = None  # two classes: held-out AUC, mean over folds (Gini = 2 AUC - 1)
    ks: float | None = None  # two classes: held-out Kolmogorov-Smirnov statistic, mean over folds
    pbs_count: int | None = None
    seconds: float | None = None
    key_bytes: int | None = None  # the largest evaluation key a party may upload for it
    verdict: str = "not needed: less accurate than the chosen one"

    @property
    def advantage_bound(self) -> float:
        """The gap attack's advantage, one standard error above its estimate."""
        return self.gap + self.gap_se

    def as_dict(self) -> dict:
        return {
            "model": self.params.label(),
            "params": asdict(self.params),
            "cv_accuracy": round(self.cv_accuracy, 4),
            "cv_accuracy_sd": round(self.cv_accuracy_sd, 4),
            "train_accuracy": round(self.train_accuracy, 4),
            "gap": round(self.gap, 4),
            "gap_se": round(self.gap_se, 4),
            "cv_auc": None if self.auc is None else round(self.auc, 4),
            "cv_gini": None if self.auc is None else round(2 * self.auc - 1, 4),
            "cv_ks": None if self.ks is None else round(self.ks, 4),
            "pbs_count": self.pbs_count,
            "estimated_seconds": None if self.seconds is None else round(self.seconds, 4),
            "evaluation_key_mb": None if self.key_bytes is None else round(self.key_bytes / 1e6, 1),
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class OverBudget:
    """Why and by how much the chosen model exceeds the latency budget (utility first)."""

    unit: str  # "seconds" (estimated) or "pbs"
    budget: float
    chosen: float  # the chosen model's estimate, in `unit`
    chosen_cv_accuracy: float
    best_within_budget_cv_accuracy: float | None  # None: no private candidate is within it


@dataclass
class Selection:
    """The parameters to train, best first, and the table of candidates."""

    ranked: list[ModelSpec]
    candidates: list[Candidate] = field(default_factory=list)
    budget_met: bool = True
    majority_accuracy: float = 0.0
    folds: str = ""
    fallback: str | None = None
    # where the chosen model is over the latency budget: by how much, and what the budget would cost
    over_budget: OverBudget | None = None

    @property
    def chosen(self) -> ModelSpec:
        return self.ranked[0]

    def summary(self) -> dict:
        """The chosen parameters, its cross-validated measures, the guards' outcome, the table."""
        chosen = next((c for c in self.candidates if c.verdict.startswith("chosen")), None)
        measures = ("cv_accuracy", "cv_auc", "cv_gini", "cv_ks", "gap", "gap_se")
        return {
            "chosen": asdict(self.chosen),
            "chosen_measures": None if chosen is None else {k: chosen.as_dict()[k] for k in measures},
            "budget_met": self.budget_met,
            "fallback": self.fallback,
            "over_budget": None if self.over_budget is None else asdict(self.over_budget),
            "majority_class_accuracy": round(self.majority_accuracy, 4),
            "cross_validation": self.folds,
            "candidates": [c.as_dict() for c in self.candidates],
        }


def candidate_grid(
    policy: SelectionPolicy,
    n_rows: int,
    ensembles: bool,
    n_classes: int = 2,
    additive: bool = False,
    trees: bool = True,
    score_widths: tuple[int, ...] | None = None,
) -> list[ModelSpec]:
    """The policy's settings that make sense for `n_rows` fitting rows of `n_classes` classes
    (trees if the engine computes `trees`, forests and boosted trees if it has `ensembles`,
    additive models if `additive`, at the policy's score widths and the engine's own `score_widths`)."""
    trees = _tree_grid(policy, n_rows, ensembles, n_classes) if trees else []
    if not additive:
        return trees
    # the coarsest encoding only: more bits per column add weights to fit, not accuracy (measured)
    additives = [
        ModelSpec(
            n_bits=min(policy.n_bits),
            random_state=policy.random_state,
            additive=True,
            regularization=c,
            score_bits=width,
            linear=linear,
            monotone=policy.monotone,
        )
        for linear in (False, True)
        for c in policy.regularizations
        for width in sorted(set(policy.score_bits) | set(score_widths or ()))
    ]
    return additives + trees


def _tree_grid(policy: SelectionPolicy, n_rows: int, ensembles: bool, n_classes: int) -> list[ModelSpec]:
    # a leaf floor above an eighth of the rows leaves almost no tree to learn
    floors = [f for f in policy.min_samples_leafs if f <= n_rows / 8] or [max(1, n_rows // 8)]
    trees = [
        ModelSpec(depth, floor, bits, policy.random_state)
        for depth in policy.max_depths
        for floor in floors
        for bits in policy.n_bits
    ]
    if not ensembles:
        return trees
    # forests only at the coarsest encoding and from depth 3: each forest costs 8 fits here
    forests = [
        ModelSpec(depth, floor, min(policy.n_bits), policy.random_state, n_estimators=size)
        for size in policy.forest_sizes
        for depth in policy.max_depths
        if depth >= 3
        for floor in floors
    ]
    if n_classes != 2:
        return trees + forests
    # boosted trees stay shallow: each one's lookups grow with 2**depth
    boosted = [
        ModelSpec(depth, floor, min(policy.n_bits), policy.random_state, n_estimators=size, boosted=True)
        for size in policy.boosted_sizes
        for depth in policy.max_depths
        if depth <= 3
        for floor in floors
    ]
    return trees + forests + boosted


def folds_for(y: np.ndarray, policy: SelectionPolicy):
    """Repeated stratified k-fold (k lowered for rare classes; plain k-fold if one has 1 row)."""
    smallest_class = int(np.min(np.unique(y, return_counts=True)[1]))
    k = min(policy.folds, smallest_class)
    if k >= 2:
        splitter = RepeatedStratifiedKFold(
            n_splits=k, n_repeats=policy.repeats, random_state=policy.random_state
        )
        return splitter, f"{k}-fold stratified x {policy.repeats} repeats"
    k = min(policy.folds, len(y))
    splitter = RepeatedKFold(n_splits=k, n_repeats=policy.repeats, random_state=policy.random_state)
    return splitter, f"{k}-fold x {policy.repeats} repeats (a class too rare to stratify)"


def ranking_measures(positive: np.ndarray, second_class_share: np.ndarray) -> tuple[float, float] | None:
    """(AUC, KS) of a two-class score where `positive` marks the second class's rows; None when
    only one class is present."""
    if positive.all() or not positive.any():
        return None
    false_positive, true_positive, _ = roc_curve(positive, second_class_share)
    return float(roc_auc_score(positive, second_class_share)), float(np.max(true_positive - false_positive))


def _measure(engine, params, layout, X, y, splits) -> Candidate:
    candidate = Candidate(params)
    held_out, trained, gaps, ranking = [], [], [], []
    classes = np.unique(y)
    two_classes = len(classes) == 2 and engine.capabilities.shares_in_clear
    for train, test in splits:
        try:
            model = engine.build(X[train], y[train], layout, params)
        except ValueError as error:  # NotCompilable and scikit-learn's refusals
            candidate.verdict = f"skipped: {error}"
            return candidate
        held_out.append(float(np.mean(model.predict(X[test]) == y[test])))
        trained.append(float(np.mean(model.predict(X[train]) == y[train])))
        gaps.append(trained[-1] - held_out[-1])
        if two_classes:
            ranking.append(ranking_measures(y[test] == classes[1], model.class_shares(X[test])[:, 1]))
    ranking = [r for r in ranking if r is not None]
    if ranking:
        candidate.auc = statistics.fmean(r[0] for r in ranking)
        candidate.ks = statistics.fmean(r[1] for r in ranking)
    candidate.cv_accuracy = statistics.fmean(held_out)
    candidate.cv_accuracy_sd = statistics.stdev(held_out) if len(held_out) > 1 else 0.0
    candidate.train_accuracy = statistics.fmean(trained)
    candidate.gap = statistics.fmean(gaps)
    candidate.gap_se = (statistics.stdev(gaps) / len(gaps) ** 0.5) if len(gaps) > 1 else 0.0
    return candidate


def _price(candidate: Candidate, engine, layout, X, y) -> bool:
    """Build on all rows and compile to price; False (verdict says why) if that fails."""
    try:
        compiled = engine.build(X, y, layout, candidate.params).compile(X[:COST_PROBE_ROWS])
    except Exception as error:  # concrete raises RuntimeError, ValueError, AssertionError, ...
        candidate.verdict = f"skipped: does not compile ({type(error).__name__}: {str(error)[:200]})"
        return False
    candidate.pbs_count = compiled.lookups
    candidate.key_bytes = compiled.key_bytes
    candidate.seconds = (
        compiled.estimated_seconds
        if compiled.estimated_seconds is not None
        else estimate_seconds(compiled.complexity, compiled.input_bytes, compiled.wide_lookups)
    )
    return True


def _at_least_as_costly(params: ModelSpec, other: ModelSpec) -> bool:
    """Of one family: an additive model with as wide scores and as many bits; trees with more (or
    as many) trees, depth and bits, no larger leaf floor and no cheaper kind of leaf (votes of 0
    cost nothing, while almost every boosted leaf adds a score)."""
    if params.additive or other.additive:
        return (
            params.additive == other.additive
            and params.linear == other.linear
            and params.score_bits >= other.score_bits
            and params.n_bits >= other.n_bits
        )
    return (
        (params.boosted or not other.boosted)
        and params.n_estimators >= other.n_estimators
        and (params.max_depth or 99) >= (other.max_depth or 99)
        and params.n_bits >= other.n_bits
        and params.min_samples_leaf <= other.min_samples_leaf
    )


def _within_budget(candidate: Candidate, policy: SelectionPolicy, engine, n_classes: int) -> bool:
    if engine.capabilities.budget == "pbs":
        return candidate.pbs_count <= policy.max_pbs
    return candidate.seconds <= budget_seconds(policy, n_classes)


def _budget_text(candidate: Candidate, policy: SelectionPolicy, engine, n_classes: int) -> str:
    if engine.capabilities.budget == "pbs":
        return f"{candidate.pbs_count} PBS > budget {policy.max_pbs}"
    return f"estimated {candidate.seconds:.3f} s > budget {budget_seconds(policy, n_classes):.3g} s"


def select_model(
    X: np.ndarray, y: np.ndarray, layout: PartyLayout, policy: SelectionPolicy, engine
) -> Selection:
    """Cross-validate the grid; compile the most accurate private candidates to price them."""
    splitter, folds = folds_for(y, policy)
    splits = list(splitter.split(X, y))
    majority = float(np.max(np.unique(y, return_counts=True)[1]) / len(y))
    n_classes = len(np.unique(y))
    grid = candidate_grid(
        policy,
        int(len(y) * (1 - 1 / policy.folds)),
        engine.capabilities.ensembles,
        n_classes,
        engine.capabilities.additive,
        engine.capabilities.trees,
        engine.capabilities.score_widths,
    )
    candidates = [_measure(engine, params, layout, X, y, splits) for params in grid]
    usable = sorted(
        (c for c in candidates if not c.verdict.startswith("skipped")),
        key=lambda c: (-c.cv_accuracy, c.params.n_estimators, c.params.max_depth or 99, c.params.n_bits),
    )
    feasible, private, over_budget, priced = [], [], [], 0
    for candidate in usable:
        if feasible and candidate.cv_accuracy < feasible[0].cv_accuracy - policy.accuracy_tolerance:
            break
        if candidate.cv_accuracy <= majority:
            candidate.verdict = f"rejected: CV accuracy not above the majority class ({majority:.3f})"
            continue
        if candidate.advantage_bound > policy.max_advantage:
            candidate.verdict = (
                f"rejected: membership advantage bound {candidate.advantage_bound:.3f} "
                f"(gap {candidate.gap:.3f} + SE {candidate.gap_se:.3f}) > {policy.max_advantage}"
            )
            continue
        costlier = next((c for c in over_budget if _at_least_as_costly(candidate.params, c.params)), None)
        if costlier is not None:
            candidate.verdict = f"rejected: at least as costly as {costlier.params.label()}, over the budget"
            continue
        if priced >= MAX_PRICED:
            candidate.verdict = "not priced: enough candidates compiled"
            continue
        priced += 1
        if not _price(candidate, engine, layout, X, y):
            continue
        private.append(candidate)
        if not _within_budget(candidate, policy, engine, n_classes):
            candidate.verdict = (
                f"rejected: over the latency budget ({_budget_text(candidate, policy, engine, n_classes)})"
            )
            over_budget.append(candidate)
            continue
        candidate.verdict = "feasible"
        feasible.append(candidate)
    selection = Selection([], candidates, majority_accuracy=majority, folds=folds)
    if not private:
        return _fallback(selection, usable, majority, policy)
    floor = max(c.cv_accuracy for c in private) - policy.max_accuracy_loss
    affordable = [c for c in feasible if c.cv_accuracy >= floor]
    if affordable:
        ranked = sorted(affordable, key=_cheapest_first)
        ranked[0].verdict = "chosen"
        selection.ranked = [c.params for c in ranked]
        return selection
    return _over_budget(selection, private, feasible, floor, policy, engine, n_classes)


def _cheapest_first(candidate: Candidate) -> tuple:
    """Cheaper first; of equal cost the smaller key (what every new applicant generates and
    uploads), the more accurate, then the larger leaf floor (more rows behind every leaf)."""
    return (
        candidate.seconds,
        candidate.key_bytes or 0,
        -candidate.cv_accuracy,
        -candidate.params.min_samples_leaf,
    )


def _over_budget(selection, private, feasible, floor, policy, engine, n_classes) -> Selection:
    """Utility first: the budget would cost more than `max_accuracy_loss`, so the cheapest private
    candidate within it of the best is served over budget, and the answer says by how much."""
    good = sorted((c for c in private if c.cv_accuracy >= floor), key=_cheapest_first)
    chosen = good[0]
    within = feasible[0] if feasible else None
    over = _budget_text(chosen, policy, engine, n_classes)
    if within is None:
        why = "no private candidate is within the latency budget"
    else:
        lost = chosen.cv_accuracy - within.cv_accuracy
        why = (
            f"the best within it ({within.params.label()}, CV {within.cv_accuracy:.3f}) loses {lost:.3f} of CV "
            f"accuracy > {policy.max_accuracy_loss}"
        )
    reason = f"served over the latency budget ({over}): {why}"
    chosen.verdict = f"chosen ({reason})"
    selection.budget_met = False
    selection.fallback = reason
    by_pbs = engine.capabilities.budget == "pbs"
    selection.over_budget = OverBudget(
        unit="pbs" if by_pbs else "seconds",
        budget=policy.max_pbs if by_pbs else round(budget_seconds(policy, n_classes), 4),
        chosen=chosen.pbs_count if by_pbs else round(chosen.seconds, 4),
        chosen_cv_accuracy=round(chosen.cv_accuracy, 4),
        best_within_budget_cv_accuracy=None if within is None else round(within.cv_accuracy, 4),
    )
    selection.ranked = [c.params for c in good] + [MAJORITY]
    _logger.warning("model selection: %s", reason)
    return selection


def _fallback(selection, usable, majority, policy) -> Selection:
    """No candidate passed the privacy guard: say so, and never serve below the majority."""
    selection.budget_met = False
    better = [c for c in usable if c.cv_accuracy > majority]
    ranked = sorted(better, key=lambda c: (c.advantage_bound, -c.cv_accuracy))
    reason = (
        f"no candidate meets the membership-advantage bound {policy.max_advantage}: the most "
        "private one that beats the majority class"
    )
    if ranked:
        ranked[0].verdict = f"chosen (fallback: {reason})"
        selection.ranked = [c.params for c in ranked] + [MAJORITY]
    else:
        reason = "no candidate beats the majority class: serving the majority class"
        selection.ranked = [MAJORITY]
    selection.fallback = reason
    _logger.warning("model selection fell back: %s", reason)
    return selection
