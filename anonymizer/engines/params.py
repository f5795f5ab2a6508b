"""The hyperparameters of one model, whichever engine trains it."""

from dataclasses import dataclass


@dataclass(frozen=True)
class TreeParams:
    """Hyperparameters of one model: a tree, or a random forest of `n_estimators` trees."""

    max_depth: int | None = 5  # None (TREE_MAX_DEPTH=0): unlimited
    min_samples_leaf: int = 20
    n_bits: int = 6
    random_state: int = 0
    n_estimators: int = 1  # > 1: a random forest, or boosted trees (thermometer engine only)
    block_bits: int = 3  # thermometer engine: width of each table lookup
    majority: bool = False  # the constant majority-class predictor (selection's last resort)
    boosted: bool = False  # gradient-boosted trees instead of a forest (two classes only)

    @property
    def family(self) -> str:
        """majority, boosted, forest or tree."""
        if self.majority:
            return "majority"
        if self.boosted:
            return "boosted"
        return "forest" if self.n_estimators > 1 else "tree"

    def label(self) -> str:
        """A short human-readable name, e.g. `forest 5x depth 4, leaf >= 20, 6 bits`."""
        if self.majority:
            return "majority class"
        trees = f"{self.family} {self.n_estimators}x " if self.family != "tree" else "tree "
        return f"{trees}depth {self.max_depth}, leaf >= {self.min_samples_leaf}, {self.n_bits} bits"
