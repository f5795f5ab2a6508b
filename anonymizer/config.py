"""Service configuration, read once from the environment."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .access import PartyTokens
from .parties import PartyLayout


ENGINES = ("thermometer", "concrete-ml")


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


@dataclass(frozen=True)
class SelectionPolicy:
    """The candidate grid and the three criteria."""

    max_depths: tuple[int, ...] = (2, 3, 4, 5, 6)
    min_samples_leafs: tuple[int, ...] = (5, 10, 20, 50, 100)
    n_bits: tuple[int, ...] = (4, 6)
    forest_sizes: tuple[int, ...] = (3, 5)
    boosted_sizes: tuple[int, ...] = (5, 10)  # two-class data only
    max_seconds: float = 0.13  # leaves room for the estimate's error under a 0.15 s target
    max_pbs: int = 80  # the concrete-ml engine's budget
    max_advantage: float = 0.02  # of the gap attack: train minus held-out accuracy
    accuracy_tolerance: float = 0.005
    folds: int = 4
    repeats: int = 2
    random_state: int = 0


@dataclass(frozen=True)
class KeyQuota:
    """Per-owner and global limits of the evaluation-key registry."""

    keys_per_owner: int = 4
    bytes_per_owner: int = 512 * 1024 * 1024
    total_keys: int = 200
    total_bytes: int = 8 * 1024 * 1024 * 1024
    idle_seconds: float = 7 * 24 * 3600  # unused this long, a key may be evicted by any upload


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


EXECUTION_MODES = ("embedded", "ray")


@dataclass(frozen=True)
class Config:
    """Everything `create_app` needs; `from_env` documents the variables."""

    challenge_host: str = "127.0.0.1:8001"
    anonymizer_id: str = "fhe_anonymizer"
    model_dir: Path = Path("model_store")
    parties: PartyLayout | None = None  # None: one data holder owning every column
    tree: TreeParams = field(default_factory=TreeParams)
    default_batch_size: int = 10_000
    max_body_bytes: int = 64 * 1024 * 1024
    max_rows: int = 1_000_000
    challenge_timeout: float = 30.0
    key_quota: KeyQuota = field(default_factory=KeyQuota)
    party_tokens: PartyTokens | None = field(default=None, repr=False)
    max_key_bytes: int = 256 * 1024 * 1024
    max_ciphertext_bytes: int = 1024 * 1024
    feature_names: list[str] | None = None
    selection: SelectionPolicy | None = field(default_factory=SelectionPolicy)
    model_key: str | None = field(default=None, repr=False)
    model_key_file: Path | None = None
    engine: str = "thermometer"
    execution: Execution = field(default_factory=Execution)

    @property
    def challenge_url(self) -> str:
        """CHALLENGE_HOST as AnoMed sets it (a bare host name), host:port, or a URL."""
        host = self.challenge_host.strip().rstrip("/")
        return host if host.startswith(("http://", "https://")) else f"http://{host}"

    @classmethod
    def from_env(cls, environ=os.environ) -> "Config":
        """Read CHALLENGE_HOST, ANONYMIZER_ID, MODEL_DIR, ANONYMIZER_PARTIES, TREE_*, tokens, limits."""
        defaults = cls()
        tree_defaults = TreeParams()

        def integer(name: str, default: int) -> int:
            value = environ.get(name)
            try:
                return default if value in (None, "") else int(value)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {value!r}") from None

        return cls(
            challenge_host=environ.get("CHALLENGE_HOST", defaults.challenge_host),
            anonymizer_id=environ.get("ANONYMIZER_ID", defaults.anonymizer_id),
            model_dir=Path(environ.get("MODEL_DIR", str(defaults.model_dir))),
            parties=PartyLayout.parse(environ["ANONYMIZER_PARTIES"])
            if environ.get("ANONYMIZER_PARTIES", "").strip()
            else None,
            tree=TreeParams(
                max_depth=integer("TREE_MAX_DEPTH", tree_defaults.max_depth) or None,
                min_samples_leaf=integer("TREE_MIN_SAMPLES_LEAF", tree_defaults.min_samples_leaf),
                n_bits=integer("TREE_N_BITS", tree_defaults.n_bits),
                random_state=integer("TREE_RANDOM_STATE", tree_defaults.random_state),
                n_estimators=integer("TREE_N_ESTIMATORS", tree_defaults.n_estimators),
                block_bits=integer("FHE_BLOCK_BITS", tree_defaults.block_bits),
                boosted=_flag(environ, "TREE_BOOSTED", tree_defaults.boosted),
            ),
            default_batch_size=integer("PREDICT_BATCH_SIZE", defaults.default_batch_size),
            max_body_bytes=integer("MAX_BODY_BYTES", defaults.max_body_bytes),
            max_rows=integer("MAX_ROWS", defaults.max_rows),
            challenge_timeout=float(
                environ.get("CHALLENGE_TIMEOUT", defaults.challenge_timeout)
            ),
            key_quota=KeyQuota(
                keys_per_owner=integer("MAX_KEYS_PER_OWNER", KeyQuota.keys_per_owner),
                bytes_per_owner=integer("MAX_KEY_BYTES_PER_OWNER", KeyQuota.bytes_per_owner),
                total_keys=integer("MAX_KEYS", KeyQuota.total_keys),
                total_bytes=integer("MAX_KEY_REGISTRY_BYTES", KeyQuota.total_bytes),
                idle_seconds=float(environ.get("KEY_IDLE_SECONDS") or KeyQuota.idle_seconds),
            ),
            party_tokens=PartyTokens.from_env(environ),
            max_key_bytes=integer("MAX_KEY_BYTES", defaults.max_key_bytes),
            max_ciphertext_bytes=integer("MAX_CIPHERTEXT_BYTES", defaults.max_ciphertext_bytes),
            feature_names=_feature_names(environ),
            selection=_selection_policy(environ, integer),
            model_key=environ.get("ANONYMIZER_MODEL_KEY") or None,
            model_key_file=Path(environ["ANONYMIZER_MODEL_KEY_FILE"])
            if environ.get("ANONYMIZER_MODEL_KEY_FILE")
            else None,
            engine=_engine(environ),
            execution=_execution(environ, integer),
        )


def _flag(environ, name: str, default: bool) -> bool:
    """A yes/no variable: unset or empty gives `default`; 0, false and no are no; anything else yes."""
    value = environ.get(name)
    return default if value in (None, "") else value not in ("0", "false", "no")


def _execution(environ, integer) -> Execution:
    """FHE_EXECUTION, FHE_EXECUTORS, FHE_MAX_QUEUED, FHE_CACHED_KEYS, FHE_JOB_TIMEOUT, FHE_EXECUTOR_*."""
    defaults = Execution()
    mode = environ.get("FHE_EXECUTION") or defaults.mode
    if mode not in EXECUTION_MODES:
        raise ValueError(f"FHE_EXECUTION must be one of {list(EXECUTION_MODES)}, got {mode!r}")
    execution = Execution(
        mode=mode,
        executors=integer("FHE_EXECUTORS", defaults.executors),
        max_queued=integer("FHE_MAX_QUEUED", defaults.max_queued),
        cached_keys=integer("FHE_CACHED_KEYS", defaults.cached_keys),
        job_timeout=float(environ.get("FHE_JOB_TIMEOUT") or defaults.job_timeout),
        nice=integer("FHE_EXECUTOR_NICE", defaults.nice),
        idle=_flag(environ, "FHE_EXECUTOR_IDLE", defaults.idle),
    )
    if execution.executors < 1 or execution.max_queued < 0 or execution.cached_keys < 1:
        raise ValueError("FHE_EXECUTORS and FHE_CACHED_KEYS must be >= 1, FHE_MAX_QUEUED >= 0")
    return execution


def _selection_policy(environ, integer) -> SelectionPolicy | None:
    """TREE_SELECTION=auto (default) searches hyperparameters; off trains TREE_* as given."""
    mode = environ.get("TREE_SELECTION", "auto")
    if mode not in ("auto", "off"):
        raise ValueError(f"TREE_SELECTION must be 'auto' or 'off', got {mode!r}")
    if mode == "off":
        return None
    defaults = SelectionPolicy()
    return SelectionPolicy(
        max_seconds=float(environ.get("FHE_MAX_SECONDS", defaults.max_seconds)),
        max_pbs=integer("FHE_MAX_PBS", defaults.max_pbs),
        # MAX_GENERALIZATION_GAP: the name before the advantage bound, still accepted
        max_advantage=float(
            environ.get("MAX_MIA_ADVANTAGE")
            or environ.get("MAX_GENERALIZATION_GAP")
            or defaults.max_advantage
        ),
    )


def _engine(environ) -> str:
    """FHE_ENGINE: thermometer (default) or concrete-ml (needs requirements-concrete-ml.txt)."""
    engine = environ.get("FHE_ENGINE", "thermometer")
    if engine not in ENGINES:
        raise ValueError(f"FHE_ENGINE must be one of {list(ENGINES)}, got {engine!r}")
    return engine


def _feature_names(environ) -> list[str] | None:
    """FEATURE_NAMES (a JSON list of column names), shown in /fhe/info; None without it."""
    text = environ.get("FEATURE_NAMES")
    if text:
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("FEATURE_NAMES must be a JSON list of strings")
        return names
    return None
