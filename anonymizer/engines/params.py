"""The hyperparameters of one model, whichever engine trains it."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """What one model is: its family (a tree, a forest or boosted trees, an additive model, the
    majority predictor) and that family's hyperparameters."""

    max_depth: int | None = 5  # None (TREE_MAX_DEPTH=0): unlimited
    min_samples_leaf: int = 20
    n_bits: int = 6
    random_state: int = 0
    n_estimators: int = 1  # > 1: a random forest, or boosted trees (thermometer engine only)
    block_bits: int = 3  # thermometer engine: width of each table lookup
    majority: bool = False  # the constant majority-class predictor (selection's last resort)
    boosted: bool = False  # gradient-boosted trees instead of a forest (two classes only)
    additive: bool = False  # an additive model (points per bin, summed): no trees at all
    regularization: float = 0.1  # additive: C of the L2-regularised logistic regression
    score_bits: int = 5  # additive: width of each class score, the input of its one lookup
    linear: bool = False  # additive: points linear in each column's level (else free per bin)
    # additive, two classes: (column, +1 or -1) pairs, the second class's points non-decreasing
    # (+1) or non-increasing (-1) in that column (credit scorecards' convention)
    monotone: tuple[tuple[int, int], ...] = ()

    @property
    def family(self) -> str:
        """majority, additive, boosted, forest or tree."""
        if self.majority:
            return "majority"
        if self.additive:
            return "additive"
        if self.boosted:
            return "boosted"
        return "forest" if self.n_estimators > 1 else "tree"

    def label(self) -> str:
        """A short human-readable name, e.g. `forest 5x depth 4, leaf >= 20, 6 bits`."""
        if self.majority:
            return "majority class"
        if self.additive:
            kind = "linear" if self.linear else "binned"
            return (
                f"additive {kind} C {self.regularization:g}, {self.score_bits}-bit scores, {self.n_bits} bits"
            )
        trees = f"{self.family} {self.n_estimators}x " if self.family != "tree" else "tree "
        return f"{trees}depth {self.max_depth}, leaf >= {self.min_samples_leaf}, {self.n_bits} bits"
