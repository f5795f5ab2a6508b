"""Service configuration, read once from the environment into values (settings.py, parties.py,
tokens.py: shared values). It imports no layer; what needs an engine to check (whether it serves a
fixed model's family) is checked by `create_app` (engines/registry.py `check_settings`)."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .parties import PartyLayout
from .settings import (
    ENCRYPTIONS,
    EXECUTION_MODES,
    DecisionLimits,
    Execution,
    KeyQuota,
    ModelSpec,
    SelectionPolicy,
)
from .tokens import AdminToken, PartyTokens

# names that say what they hold, and the names they had when every model was a tree (still
# accepted; docs/configuration.md lists them as aliases)
ALIASES = {
    "MODEL_SELECTION": "TREE_SELECTION",
    "MODEL_ADDITIVE": "TREE_ADDITIVE",
    "ENCODING_BITS": "TREE_N_BITS",
    "MODEL_RANDOM_STATE": "TREE_RANDOM_STATE",
}


def named(environ, name: str) -> str:
    """The variable to read for `name`: itself, or its old name (ALIASES) where only that is set,
    so that messages name what the operator set; ValueError if both are set and disagree."""
    old = ALIASES.get(name)
    if old is None or old not in environ:
        return name
    if name in environ and environ[name] != environ[old]:
        raise ValueError(
            f"{name}={environ[name]!r} and its old name {old}={environ[old]!r} disagree: set one."
        )
    return old


@dataclass(frozen=True)
class Config:
    """Everything `create_app` needs; `from_env` documents the variables."""

    challenge_host: str = "127.0.0.1:8001"
    anonymizer_id: str = "fhe_anonymizer"
    model_dir: Path = Path("model_store")
    parties: PartyLayout | None = None  # None: one data holder owning every column
    tree: ModelSpec = field(default_factory=ModelSpec)
    default_batch_size: int = 10_000
    max_body_bytes: int = 64 * 1024 * 1024
    max_rows: int = 1_000_000
    max_array_bytes: int = 256 * 1024 * 1024  # X of one plaintext request, as float64
    max_batch_size: int = 100_000  # rows the model predicts at once (a request's batch_size)
    challenge_timeout: float = 30.0
    key_quota: KeyQuota = field(default_factory=KeyQuota)
    # encrypted decisions per key and per owner within a window (0: no limit); plaintext is free
    decisions: DecisionLimits = field(default_factory=DecisionLimits)
    party_tokens: PartyTokens | None = field(default=None, repr=False)
    admin_token: AdminToken | None = field(default=None, repr=False)  # guards /fit and /evaluate
    max_key_bytes: int = 256 * 1024 * 1024
    max_ciphertext_bytes: int = 4 * 1024 * 1024  # a Paillier part with proofs: ~1.4 kB per bit
    key_uploads: int = 2  # key uploads each HTTP worker reads and checks at once (429 beyond)
    feature_names: list[str] | None = None
    selection: SelectionPolicy | None = field(default_factory=SelectionPolicy)
    model_key: str | None = field(default=None, repr=False)
    model_key_file: Path | None = None
    engine: str = "thermometer"
    execution: Execution = field(default_factory=Execution)
    reason_codes: bool = True  # REASON_CODES: serve encrypted reason codes where the model gives them
    # HTTP worker processes sharing the executors (gunicorn.conf.py sets it): each admits its
    # share of the executors' capacity, refusing the rest before reading their bodies
    http_workers: int = 1

    @property
    def challenge_url(self) -> str:
        """CHALLENGE_HOST as AnoMed sets it (a bare host name), host:port, or a URL."""
        host = self.challenge_host.strip().rstrip("/")
        return host if host.startswith(("http://", "https://")) else f"http://{host}"

    @classmethod
    def from_env(cls, environ=os.environ) -> "Config":
        """Read CHALLENGE_HOST, ANONYMIZER_ID, MODEL_DIR, ANONYMIZER_PARTIES, MODEL_*, TREE_*,
        tokens, limits (old names through ALIASES)."""
        defaults = cls()
        tree_defaults = ModelSpec()

        integer = _reader(environ, int, "an integer")
        number = _reader(environ, float, "a number")
        feature_names = _feature_names(environ)
        monotone = _monotone(environ, feature_names)

        return cls(
            challenge_host=environ.get("CHALLENGE_HOST", defaults.challenge_host),
            anonymizer_id=environ.get("ANONYMIZER_ID", defaults.anonymizer_id),
            model_dir=Path(environ.get("MODEL_DIR", str(defaults.model_dir))),
            parties=PartyLayout.parse(environ["ANONYMIZER_PARTIES"])
            if environ.get("ANONYMIZER_PARTIES", "").strip()
            else None,
            tree=ModelSpec(
                max_depth=integer("TREE_MAX_DEPTH", tree_defaults.max_depth) or None,
                min_samples_leaf=integer("TREE_MIN_SAMPLES_LEAF", tree_defaults.min_samples_leaf),
                n_bits=integer(named(environ, "ENCODING_BITS"), tree_defaults.n_bits),
                random_state=integer(named(environ, "MODEL_RANDOM_STATE"), tree_defaults.random_state),
                n_estimators=integer("TREE_N_ESTIMATORS", tree_defaults.n_estimators),
                block_bits=integer("FHE_BLOCK_BITS", tree_defaults.block_bits),
                boosted=_flag(environ, "TREE_BOOSTED", tree_defaults.boosted),
                additive=_flag(environ, named(environ, "MODEL_ADDITIVE"), tree_defaults.additive),
                regularization=number("ADDITIVE_C", tree_defaults.regularization),
                score_bits=integer("ADDITIVE_SCORE_BITS", tree_defaults.score_bits),
                linear=_flag(environ, "ADDITIVE_LINEAR", tree_defaults.linear),
                monotone=monotone,
            ),
            default_batch_size=integer("PREDICT_BATCH_SIZE", defaults.default_batch_size),
            max_body_bytes=integer("MAX_BODY_BYTES", defaults.max_body_bytes),
            max_rows=integer("MAX_ROWS", defaults.max_rows),
            max_array_bytes=integer("MAX_ARRAY_BYTES", defaults.max_array_bytes),
            max_batch_size=integer("MAX_BATCH_SIZE", defaults.max_batch_size),
            challenge_timeout=number("CHALLENGE_TIMEOUT", defaults.challenge_timeout),
            key_quota=KeyQuota(
                keys_per_owner=integer("MAX_KEYS_PER_OWNER", KeyQuota.keys_per_owner),
                bytes_per_owner=integer("MAX_KEY_BYTES_PER_OWNER", KeyQuota.bytes_per_owner),
                total_keys=integer("MAX_KEYS", KeyQuota.total_keys),
                total_bytes=integer("MAX_KEY_REGISTRY_BYTES", KeyQuota.total_bytes),
                idle_seconds=number("KEY_IDLE_SECONDS", KeyQuota.idle_seconds),
                live_seconds=number("KEY_LIVE_SECONDS", KeyQuota.live_seconds),
            ),
            decisions=_decision_limits(environ, integer, number),
            party_tokens=PartyTokens.from_env(environ),
            admin_token=AdminToken.from_env(environ),
            max_key_bytes=integer("MAX_KEY_BYTES", defaults.max_key_bytes),
            max_ciphertext_bytes=integer("MAX_CIPHERTEXT_BYTES", defaults.max_ciphertext_bytes),
            key_uploads=integer("MAX_KEY_UPLOADS", defaults.key_uploads),
            feature_names=feature_names,
            selection=_selection_policy(environ, integer, number, monotone),
            model_key=environ.get("ANONYMIZER_MODEL_KEY") or None,
            model_key_file=Path(environ["ANONYMIZER_MODEL_KEY_FILE"])
            if environ.get("ANONYMIZER_MODEL_KEY_FILE")
            else None,
            engine=_engine(environ),
            execution=_execution(environ, integer, number),
            reason_codes=_flag(environ, "REASON_CODES", defaults.reason_codes),
            http_workers=max(1, integer("ANONYMIZER_HTTP_WORKERS", defaults.http_workers)),
        )


def _reader(environ, parse, kind: str):
    """A reader of variables of one type: unset or empty gives the default; garbage a ValueError."""

    def read(name: str, default):
        value = environ.get(name)
        try:
            return default if value in (None, "") else parse(value)
        except ValueError:
            raise ValueError(f"{name} must be {kind}, got {value!r}") from None

    return read


YES, NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_flag(text: str | None, name: str, default: bool = False) -> bool:
    """A yes/no setting (an environment variable or a form field): empty or unset gives
    `default`; 1/true/yes/on and 0/false/no/off in any case; anything else a ValueError naming
    `name` (a typo must not silently mean yes)."""
    value = (text or "").strip().lower()
    if value == "":
        return default
    if value in YES or value in NO:
        return value in YES
    raise ValueError(f"{name} must be 1 or 0 (yes/no, true/false, on/off), got {(text or '')[:40]!r}")


def _flag(environ, name: str, default: bool) -> bool:
    return parse_flag(environ.get(name), name, default)


def _execution(environ, integer, number) -> Execution:
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
        job_timeout=number("FHE_JOB_TIMEOUT", defaults.job_timeout),
        nice=integer("FHE_EXECUTOR_NICE", defaults.nice),
        idle=_flag(environ, "FHE_EXECUTOR_IDLE", defaults.idle),
    )
    if execution.executors < 1 or execution.max_queued < 0 or execution.cached_keys < 1:
        raise ValueError("FHE_EXECUTORS and FHE_CACHED_KEYS must be >= 1, FHE_MAX_QUEUED >= 0")
    return execution


def _decision_limits(environ, integer, number) -> DecisionLimits:
    """ANONYMIZER_DECISIONS_PER_KEY, ANONYMIZER_DECISIONS_PER_OWNER (0: no limit) and
    ANONYMIZER_DECISION_WINDOW_SECONDS."""
    defaults = DecisionLimits()
    limits = DecisionLimits(
        per_key=integer("ANONYMIZER_DECISIONS_PER_KEY", defaults.per_key),
        per_owner=integer("ANONYMIZER_DECISIONS_PER_OWNER", defaults.per_owner),
        window_seconds=number("ANONYMIZER_DECISION_WINDOW_SECONDS", defaults.window_seconds),
    )
    if limits.per_key < 0 or limits.per_owner < 0:
        raise ValueError("ANONYMIZER_DECISIONS_PER_KEY and ANONYMIZER_DECISIONS_PER_OWNER must be >= 0")
    if limits.enabled and not limits.window_seconds >= 1:
        raise ValueError("ANONYMIZER_DECISION_WINDOW_SECONDS must be at least 1")
    return limits


def _selection_policy(environ, integer, number, monotone) -> SelectionPolicy | None:
    """MODEL_SELECTION=auto (default) searches hyperparameters; off trains the model as given."""
    name = named(environ, "MODEL_SELECTION")
    mode = environ.get(name, "auto")
    if mode not in ("auto", "off"):
        raise ValueError(f"{name} must be 'auto' or 'off', got {mode!r}")
    if mode == "off":
        return None
    defaults = SelectionPolicy()
    return SelectionPolicy(
        max_seconds=number("FHE_MAX_SECONDS", defaults.max_seconds),
        max_pbs=integer("FHE_MAX_PBS", defaults.max_pbs),
        # MAX_GENERALIZATION_GAP: the name before the advantage bound, still accepted
        max_advantage=number("MAX_MIA_ADVANTAGE", number("MAX_GENERALIZATION_GAP", defaults.max_advantage)),
        monotone=monotone,
    )


def _engine(environ) -> str:
    """ANONYMIZER_ENCRYPTION: tfhe (default) or paillier (additive models under the applicant's
    public key: the paillier engine); FHE_ENGINE: one of the engines of that encryption
    (tfhe: thermometer, the default, or concrete-ml)."""
    encryption = environ.get("ANONYMIZER_ENCRYPTION") or "tfhe"
    if encryption not in ENCRYPTIONS:
        raise ValueError(f"ANONYMIZER_ENCRYPTION must be one of {list(ENCRYPTIONS)}, got {encryption!r}")
    choices = ENCRYPTIONS[encryption]
    engine = environ.get("FHE_ENGINE") or choices[0]
    if engine not in choices:
        raise ValueError(
            f"With ANONYMIZER_ENCRYPTION={encryption}, FHE_ENGINE must be one of {list(choices)} (or unset), "
            f"got {engine!r}"
        )
    return engine


def _monotone(environ, feature_names: list[str] | None) -> tuple[tuple[int, int], ...]:
    """ADDITIVE_MONOTONE: a JSON object {column index or FEATURE_NAMES name: 1 or -1}."""
    text = environ.get("ADDITIVE_MONOTONE")
    if not text:
        return ()
    wanted = json.loads(text)
    if not isinstance(wanted, dict) or not all(v in (1, -1) for v in wanted.values()):
        raise ValueError("ADDITIVE_MONOTONE must be a JSON object {column: 1 or -1}")
    names = feature_names or []
    pairs = []
    for column, direction in wanted.items():
        if column in names:
            pairs.append((names.index(column), direction))
        elif column.isdigit():
            pairs.append((int(column), direction))
        else:
            raise ValueError(
                f"ADDITIVE_MONOTONE names {column!r}: neither a column index nor in FEATURE_NAMES"
            )
    return tuple(sorted(pairs))


def _feature_names(environ) -> list[str] | None:
    """FEATURE_NAMES (a JSON list of column names), shown in /fhe/info; None without it."""
    text = environ.get("FEATURE_NAMES")
    if text:
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("FEATURE_NAMES must be a JSON list of strings")
        return names
    return None
