"""The settings' value types, shared by every layer: what `config.py` reads the environment into
and what each layer is configured with. Standard library only, so `config.py` imports no layer
(`tests/test_architecture.py` checks both)."""

from dataclasses import dataclass

# what ANONYMIZER_ENCRYPTION selects: the engines FHE_ENGINE may name under it, the default first
# (engines/registry.py says where each engine lives; the architecture test checks they agree)
ENCRYPTIONS = {"tfhe": ("thermometer", "concrete-ml"), "paillier": ("paillier",)}
EXECUTION_MODES = ("embedded", "ray")


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


@dataclass(frozen=True)
class SelectionPolicy:
    """The candidate grid and the three criteria."""

    max_depths: tuple[int, ...] = (2, 3, 4, 5, 6)
    min_samples_leafs: tuple[int, ...] = (5, 10, 20, 50, 100)
    n_bits: tuple[int, ...] = (4, 6)
    forest_sizes: tuple[int, ...] = (3, 5)
    boosted_sizes: tuple[int, ...] = (5, 10)  # two-class data only
    regularizations: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)  # additive models: C
    score_bits: tuple[int, ...] = (4, 5, 6)  # additive models: width of each class score
    monotone: tuple[tuple[int, int], ...] = ()  # additive models: see ModelSpec.monotone
    max_seconds: float = 0.13  # two classes; leaves room for the estimate's error under 0.15 s
    max_pbs: int = 80  # the budget of engines priced by bootstrap count (concrete-ml)
    max_advantage: float = 0.02  # of the gap attack: train minus held-out accuracy
    accuracy_tolerance: float = 0.005
    # utility first: the latency budget may cost the served model at most this much CV accuracy
    # against the most accurate private candidate; beyond it the better model is served over budget
    max_accuracy_loss: float = 0.01
    folds: int = 4
    repeats: int = 2
    random_state: int = 0


@dataclass(frozen=True)
class Execution:
    """Where encrypted jobs run: embedded executor processes (default) or Ray actors."""

    mode: str = "embedded"  # FHE_EXECUTION: embedded | ray (cluster from RAY_ADDRESS)
    executors: int = 2  # per machine (embedded) or in the cluster (ray)
    max_queued: int = 4  # encrypted jobs waiting beyond the running ones, per machine; then 429
    cached_keys: int = 4  # deserialized keys per executor (70-260 MB each in `make bench`)
    job_timeout: float = 600.0
    nice: int = 10  # executors yield the CPU to plaintext /predict
    idle: bool = True  # embedded executors run under SCHED_IDLE: only CPU time nobody else wants

    @property
    def waiting_per_executor(self) -> int:
        """Jobs that may wait behind each executor's running one: FHE_MAX_QUEUED split over them."""
        return -(-self.max_queued // self.executors)

    @property
    def capacity(self) -> int:
        """Encrypted jobs the executors hold at once: each one's running job and its waiting ones."""
        return self.executors * (1 + self.waiting_per_executor)


@dataclass(frozen=True)
class KeyQuota:
    """Per-owner and global limits of the evaluation-key registry."""

    keys_per_owner: int = 4
    bytes_per_owner: int = 512 * 1024 * 1024
    total_keys: int = 200
    total_bytes: int = 8 * 1024 * 1024 * 1024
    idle_seconds: float = 7 * 24 * 3600  # unused this long, a key may be evicted by any upload
    live_seconds: float = 30.0  # used this recently (uploaded, staged into, run): never evicted


@dataclass(frozen=True)
class DecisionLimits:
    """Decisions per key and per owner within one window; 0 turns a limit off."""

    per_key: int = 1000
    per_owner: int = 10_000
    window_seconds: float = 86_400.0

    @property
    def enabled(self) -> bool:
        return bool(self.per_key or self.per_owner)
