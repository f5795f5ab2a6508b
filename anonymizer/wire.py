"""The wire contract between the server, the party SDK and the console, in one module they all
import: the `/fhe/info` document, the machine-readable `code` of every error body, the claim a
party's keys and ciphertexts carry, and the decision a party decrypts. Standard library only (a party installs no server).

Clients branch on `ErrorCode`, never on titles or descriptions: those are written for people and
may change; a code, once published, keeps its meaning.
"""

from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import StrEnum
from typing import NamedTuple


class ErrorCode(StrEnum):
    """The `code` field of every error body the server sends."""

    # what the encrypted protocol's clients act on
    UNKNOWN_KEY = "unknown_key"  # 404: never issued, evicted or damaged: upload it again
    MODEL_CHANGED = "model_changed"  # 409: made for a model no longer served: follow /fhe/info
    MISSING_INPUT = "missing_input"  # 400: a party's ciphertext neither sent nor staged
    BAD_CIPHERTEXT = "bad_ciphertext"  # 400: does not parse or does not fit the circuit
    BAD_KEYS = "bad_keys"  # 400: not keys of the served circuit (not kept)
    NOT_OFFERED = "not_offered"  # 400: a function (reasons) this server does not compute
    NOT_YOUR_KEY = "not_your_key"  # 403: the key belongs to another owner
    NOT_YOUR_SLOT = "not_your_slot"  # 403: another party's slot, where tokens name parties
    TOKEN_REQUIRED = "token_required"  # 401: a party or admin bearer token is needed
    BUDGET_SPENT = "budget_spent"  # 429: the decision budget of the window is spent: do not retry
    BUSY = "busy"  # 429: queue full or uploads being checked: retry after Retry-After
    REGISTRY_FULL = "registry_full"  # 429: no room for a key without evicting live ones
    EXECUTOR_UNAVAILABLE = "executor_unavailable"  # 503: restarting: retry after Retry-After
    OUT_OF_MEMORY = "out_of_memory"  # 503: retry later or send less
    NOT_FITTED = "not_fitted"  # 503: POST /fit first
    STATE_UNAVAILABLE = "state_unavailable"  # 503: stored state unreadable: refit
    CHALLENGE_UNAVAILABLE = "challenge_unavailable"  # 502/503: the challenge did not answer well
    STORAGE_FULL = "storage_full"  # 507
    TOO_LARGE = "too_large"  # 413: a limit (docs/operations.md#limits)
    # every other refusal: by its status
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    LENGTH_REQUIRED = "length_required"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNPROCESSABLE = "unprocessable"
    TOO_MANY_REQUESTS = "too_many_requests"
    UNAVAILABLE = "unavailable"
    BAD_GATEWAY = "bad_gateway"
    ERROR = "error"


_BY_STATUS = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    411: ErrorCode.LENGTH_REQUIRED,
    413: ErrorCode.TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.UNPROCESSABLE,
    429: ErrorCode.TOO_MANY_REQUESTS,
    502: ErrorCode.BAD_GATEWAY,
    503: ErrorCode.UNAVAILABLE,
    507: ErrorCode.STORAGE_FULL,
}


def code_for_status(status: int) -> ErrorCode:
    """The generic code of a refusal that names no more specific one."""
    return _BY_STATUS.get(status, ErrorCode.ERROR)


def parse_code(text: object) -> ErrorCode | None:
    """The ErrorCode an error body's `code` names; None if absent or unknown (a newer server)."""
    try:
        return ErrorCode(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Claim:
    """What a party's keys and ciphertexts were made for: a model version and, where the server
    publishes one, its keys digest (versions with equal digests accept each other's keys)."""

    model_version: str
    keys_digest: str | None = None

    def params(self) -> dict[str, str]:
        """The claim as the query parameters or form fields the server reads."""
        digest = {"keys_digest": self.keys_digest} if self.keys_digest else {}
        return {"model_version": self.model_version, **digest}


class Decision(NamedTuple):
    """What the applicant decrypts: the decided class, and its share of the votes or probability
    where the scheme reveals one (None under Paillier: the blinded answer carries the decision only)."""

    label: object
    probability: float | None


def percent(probability: float | None) -> str:
    """A probability for people: '73.5 %', or '—' where the scheme reveals none."""
    return "—" if probability is None else f"{probability * 100:.1f} %"


# the protocol name of a batched explanation: the decision at every level of one feature in one
# encrypted call (`explain/<feature column>`); its result has one decision per level, in order
EXPLAIN_PREFIX = "explain/"
# the most decisions one staged part may serve: a batched explanation of a 64-level feature and
# the decision before it
MAX_STAGED_USES = 128


def explain_function(column: int) -> str:
    """The protocol name of the batched explanation over every level of feature `column`."""
    return f"{EXPLAIN_PREFIX}{column}"


def explained_column(function: str) -> int | None:
    """The feature column a batched-explanation function covers; None for any other function."""
    prefix, _, column = function.partition(EXPLAIN_PREFIX)
    return int(column) if not prefix and column.isascii() and column.isdigit() else None


# the protocol name of several rows of one applicant in one encrypted call (`rows/<count>`): the
# applicant's (the first party's) argument holds `count` rows, every other party's one row that
# all of them share; its result has one decision per row, in order
ROWS_PREFIX = "rows/"
# the row counts a served module may offer (a call pads its rows up to the next one)
ROW_BATCHES = (2, 4, 8)


def rows_function(count: int) -> str:
    """The protocol name of `count` rows of the applicant decided in one call."""
    return f"{ROWS_PREFIX}{count}"


def rows_in(function: str) -> int | None:
    """The rows a several-rows function decides; None for any other function."""
    prefix, _, count = function.partition(ROWS_PREFIX)
    return int(count) if not prefix and count.isascii() and count.isdigit() else None


class MalformedInfo(ValueError):
    """A `/fhe/info` document that lacks a field a party needs or gives it the wrong type."""


OPTIONAL_SECTIONS = ("encoding", "decoding", "reasons", "paillier")  # absent, not null, when unused


@dataclass(frozen=True)
class FheInfo:
    """`GET /fhe/info`: what a party needs to encrypt its columns for the served model and to
    read the answer. Built once on the server (`EncryptedScoring.info_document`), checked once
    by the SDK (`from_document`); fields a newer server adds are ignored by older clients."""

    model_version: str
    scheme: str  # tfhe | paillier
    engine: str
    parties: dict[str, list[int]]  # each party's columns, in circuit argument order
    n_features: int
    classes: list
    keys_digest: str  # versions with the same digest accept each other's keys and ciphertexts
    feature_names: list[str] | None = None
    functions: dict[str, str | None] = field(default_factory=dict)  # what is offered -> circuit
    encoding: dict | None = None  # thermometer engines: each party's columns and bin edges
    decoding: dict | None = None  # how the decrypted output becomes class shares
    reasons: dict | None = None  # where reasons are offered: the column of each points-lost entry
    paillier: dict | None = None  # the Paillier scheme's parameters and bit counts
    pbs_count: int | None = None
    tree_depth: int | None = None
    tree_leaves: int | None = None

    @property
    def applicant(self) -> str:
        """The layout's first party: the one that makes the keys and decides."""
        return next(iter(self.parties))

    @property
    def blinded(self) -> bool:
        """Whether the answer carries the decision only (Paillier), no probability."""
        return bool((self.decoding or {}).get("blinded"))

    def to_document(self) -> dict:
        """The JSON document the server sends (optional sections left out when unused)."""
        document = asdict(self)
        for name in OPTIONAL_SECTIONS:
            if document[name] is None:
                del document[name]
        return document

    @classmethod
    def from_document(cls, document: object) -> "FheInfo":
        """The info a server sent; MalformedInfo naming the first field that is missing or wrong
        (a party must not encrypt for a layout it cannot read)."""
        if not isinstance(document, dict):
            raise MalformedInfo("/fhe/info is not a JSON object.")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in document]
        if missing:
            raise MalformedInfo(f"/fhe/info has a missing or malformed {missing[0]!r}.")
        known = {f.name for f in fields(cls)}
        info = cls(**{k: v for k, v in document.items() if k in known})
        info._check()
        return info

    def _check(self) -> None:
        checks = (  # in order: later checks may rely on earlier fields
            ("model_version", lambda: isinstance(self.model_version, str)),
            ("scheme", lambda: isinstance(self.scheme, str)),
            ("engine", lambda: isinstance(self.engine, str)),
            ("n_features", lambda: _is_int(self.n_features) and self.n_features > 0),
            ("classes", lambda: isinstance(self.classes, list) and len(self.classes) >= 2),
            ("keys_digest", lambda: isinstance(self.keys_digest, str)),
            ("parties", lambda: _is_layout(self.parties, self.n_features)),
            ("feature_names", lambda: self.feature_names is None or _is_list_of(self.feature_names, str)),
            ("functions", lambda: _is_functions(self.functions)),
            ("encoding", lambda: self.encoding is None or _is_encoding(self.encoding, self.parties)),
            ("decoding", lambda: self.decoding is None or isinstance(self.decoding, dict)),
            ("reasons", lambda: self.reasons is None or _is_reasons(self.reasons, self.n_features)),
            ("paillier", lambda: self.paillier is None or isinstance(self.paillier, dict)),
        )
        wrong = next((name for name, fine in checks if not fine()), None)
        if wrong is not None:
            raise MalformedInfo(f"/fhe/info has a missing or malformed {wrong!r}.")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_list_of(value: object, kind) -> bool:
    return isinstance(value, list) and all(isinstance(item, kind) for item in value)


def _is_functions(functions: object) -> bool:
    """{protocol function: circuit function name, or None for a circuit's only one}."""
    return isinstance(functions, dict) and all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in functions.items()
    )


def _is_encoding(encoding: object, parties: dict) -> bool:
    """Each party's {columns: its columns, edges: a list of numbers per column}."""
    if not isinstance(encoding, dict) or set(encoding) != set(parties):
        return False
    for party, entry in encoding.items():
        if not isinstance(entry, dict) or entry.get("columns") != parties[party]:
            return False
        edges = entry.get("edges")
        if not isinstance(edges, list) or len(edges) != len(parties[party]):
            return False
        if not all(isinstance(column, list) and all(_is_number(e) for e in column) for column in edges):
            return False
    return True


def _is_reasons(reasons: object, n_features: int) -> bool:
    """{columns: the feature of each points-lost entry}, and where the entries are packed
    {radices: each entry's range, groups: a partition of the entries into packed outputs}."""
    columns = reasons.get("columns") if isinstance(reasons, dict) else None
    if not (isinstance(columns, list) and all(_is_int(c) and 0 <= c < n_features for c in columns)):
        return False
    if "groups" not in reasons and "radices" not in reasons:
        return True
    radices, groups = reasons.get("radices"), reasons.get("groups")
    return (
        isinstance(radices, list)
        and len(radices) == len(columns)
        and all(_is_int(r) and r >= 1 for r in radices)
        and isinstance(groups, list)
        and all(_is_list_of(g, int) for g in groups)
        and sorted(e for g in groups for e in g) == list(range(len(columns)))
    )


def _is_layout(parties: object, n_features: int) -> bool:
    """Parties, each with at least one column; every column an integer feature, owned once."""
    if not isinstance(parties, dict) or not parties:
        return False
    if any(not isinstance(owned, list) or not owned for owned in parties.values()):
        return False
    columns = [column for owned in parties.values() for column in owned]
    in_range = all(_is_int(c) and 0 <= c < n_features for c in columns)
    return in_range and len(set(columns)) == len(columns)
