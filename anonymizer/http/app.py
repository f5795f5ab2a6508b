"""The AnoMed anonymizer web app: `create_app(config)` builds the collaborators and the routes
(`/`, `/fit`, `/evaluate`, `/predict` and the encrypted protocol under `/fhe`), and turns the
service layer's exceptions into HTTP answers in one place."""

import json

import falcon

from ..config import Config
from ..engines.registry import check_settings, load_model
from ..engines.runtime import release_freed_memory, start_fhe_runtime
from ..execution import open_executors
from ..execution.base import Busy, Executors, ExecutorUnavailable, StaleJob
from ..service.challenge import ChallengeClient, ChallengeRefused, ChallengeUnavailable
from ..service.scoring import BadCiphertext, BadKeys, EncryptedScoring, MissingInput, NotOffered, StaleKey
from ..state.decisions import DecisionBudget
from ..state.keys import KeyRegistry, KeyTooLarge, NotOwner, RegistryFull, UnknownKey
from ..state.models import ModelStore, StoreUnavailable
from ..state.staged import StagedInputs
from ..state.storage import StorageFull
from ..state.vault import ModelKeySource, SealError
from ..wire import ErrorCode, code_for_status
from . import resources
from .access import Caller, RefundFailedDecisions


def refuse_unreadable_state(req, resp, error: StoreUnavailable | SealError, params) -> None:
    """Stored state that is unreadable or fails authentication is never served: 503 until repaired."""
    raise falcon.HTTPServiceUnavailable(
        title="Stored model unavailable",
        description=f"{error} Refit (POST /fit).",
        code=ErrorCode.STATE_UNAVAILABLE,
    )


def refuse_busy(req, resp, error: Busy, params) -> None:
    """The encrypted queue is full: 429 with the expected wait."""
    raise falcon.HTTPTooManyRequests(
        title="Encrypted queue full",
        description=str(error),
        retry_after=error.retry_after,
        code=ErrorCode.BUSY,
    )


def refuse_unavailable_executor(req, resp, error: ExecutorUnavailable, params) -> None:
    """No executor could take the job (restarting, or died mid-job): 503, retry shortly."""
    raise falcon.HTTPServiceUnavailable(
        title="Encrypted executor unavailable",
        description=str(error),
        retry_after=2,
        code=ErrorCode.EXECUTOR_UNAVAILABLE,
    )


def refuse_unknown_key(req, resp, error: UnknownKey, params) -> None:
    """The key was never issued, was evicted, or its stored copy is damaged: 404."""
    raise falcon.HTTPNotFound(title="Unknown key", description=error.reason, code=ErrorCode.UNKNOWN_KEY)


def refuse_stale(req, resp, error: StaleKey | StaleJob, params) -> None:
    """A key, ciphertext or job made for a model that is no longer served: 409."""
    title = getattr(error, "title", "Stale key or ciphertext")
    raise falcon.HTTPConflict(title=title, description=str(error), code=ErrorCode.MODEL_CHANGED)


def refuse_not_owner(req, resp, error: NotOwner, params) -> None:
    """The key belongs to another owner: 403."""
    raise falcon.HTTPForbidden(title="Not your key", description=str(error), code=ErrorCode.NOT_YOUR_KEY)


def refuse_bad_input(req, resp, error: MissingInput | BadCiphertext | BadKeys | NotOffered, params) -> None:
    """Encrypted inputs or keys that cannot be used: 400 naming what is wrong."""
    title, code = next(named for kind, named in BAD_INPUTS if isinstance(error, kind))
    raise falcon.HTTPBadRequest(title=title, description=str(error), code=code)


BAD_INPUTS = (
    (MissingInput, ("Missing party input", ErrorCode.MISSING_INPUT)),
    (BadCiphertext, ("Bad ciphertext", ErrorCode.BAD_CIPHERTEXT)),
    (NotOffered, ("Not offered", ErrorCode.NOT_OFFERED)),
    (BadKeys, ("Bad evaluation keys", ErrorCode.BAD_KEYS)),
)


def refuse_large_key(req, resp, error: KeyTooLarge, params) -> None:
    """One key larger than an owner may store: 413."""
    raise falcon.HTTPContentTooLarge(description=str(error))


def refuse_full_registry(req, resp, error: RegistryFull, params) -> None:
    """No room for the key without evicting others' live keys: 429 with the expected wait."""
    raise falcon.HTTPTooManyRequests(
        title="Key registry full",
        description=str(error),
        retry_after=error.retry_after,
        code=ErrorCode.REGISTRY_FULL,
    )


def refuse_full_disk(req, resp, error: StorageFull, params) -> None:
    """The disk holding MODEL_DIR is full: 507, nothing was stored, the served model is untouched."""
    raise falcon.HTTPInsufficientStorage(
        title="Insufficient storage", description=str(error), code=ErrorCode.STORAGE_FULL
    )


def refuse_out_of_memory(req, resp, error: MemoryError, params) -> None:
    """A request that needed more memory than the process could get: 503, nothing kept; the
    worker lives on (retry later, or send less per request)."""
    release_freed_memory()
    raise falcon.HTTPServiceUnavailable(
        title="Out of memory",
        description="The server lacked the memory for this request now: retry later or send fewer rows.",
        retry_after=5,
        code=ErrorCode.OUT_OF_MEMORY,
    )


def refuse_challenge_down(req, resp, error: ChallengeUnavailable, params) -> None:
    """The challenge did not answer: 503."""
    raise falcon.HTTPServiceUnavailable(description=str(error), code=ErrorCode.CHALLENGE_UNAVAILABLE)


def refuse_challenge_answer(req, resp, error: ChallengeRefused, params) -> None:
    """The challenge answered wrongly: 502."""
    raise falcon.HTTPBadGateway(description=str(error), code=ErrorCode.CHALLENGE_UNAVAILABLE)


ERROR_HANDLERS = (
    (StoreUnavailable, refuse_unreadable_state),
    (SealError, refuse_unreadable_state),
    (Busy, refuse_busy),
    (ExecutorUnavailable, refuse_unavailable_executor),
    (UnknownKey, refuse_unknown_key),
    (StaleJob, refuse_stale),
    (StaleKey, refuse_stale),
    (NotOwner, refuse_not_owner),
    (MissingInput, refuse_bad_input),
    (BadCiphertext, refuse_bad_input),
    (NotOffered, refuse_bad_input),
    (BadKeys, refuse_bad_input),
    (KeyTooLarge, refuse_large_key),
    (RegistryFull, refuse_full_registry),
    (StorageFull, refuse_full_disk),
    (ChallengeUnavailable, refuse_challenge_down),
    (ChallengeRefused, refuse_challenge_answer),
    (MemoryError, refuse_out_of_memory),
)


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Every error body as JSON with its machine-readable `code` (wire.ErrorCode): the one the
    refusal names, else the generic one of its status. Clients branch on it, never on titles."""
    body = error.to_dict()
    body["code"] = str(error.code or code_for_status(error.status_code))
    resp.text = json.dumps(body)
    resp.content_type = falcon.MEDIA_JSON


class DrainUnreadBody:
    """Reads what a refused request left of its body (up to `limit` bytes): a proxy still sending
    a large upload (nginx, a 25 MB key answered 409 before it is read) then relays the answer
    instead of a reset connection (502)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit

    def process_response(self, req, resp, resource, req_succeeded: bool) -> None:
        """Exhaust the unread rest of a body within the limit; never fails the answer."""
        if getattr(req.context, "body_parsed", False):  # read to its end by the multipart parser
            return
        if req.content_length and req.content_length <= self._limit:
            try:
                req.bounded_stream.exhaust()
            except OSError:
                pass  # the client went away: nothing to answer


def create_app(config: Config, executors: Executors | None = None) -> falcon.App:
    """Build the anonymizer app and its collaborators from `config` (executors: see execution/);
    ValueError for settings the engine cannot serve."""
    check_settings(config.engine, config.tree, config.selection is not None)
    start_fhe_runtime()
    config.model_dir.mkdir(parents=True, exist_ok=True)
    key_source = ModelKeySource(config.model_dir, config.model_key, config.model_key_file)
    key_source.warn_if_beside_models()
    store = ModelStore(config.model_dir, key_source, load_model)
    registry = KeyRegistry(config.model_dir / "keys", config.key_quota)
    scoring = EncryptedScoring(
        registry,
        StagedInputs(registry),
        executors or open_executors(config),
        config.reason_codes,
        capacity=-(-config.execution.capacity // config.http_workers),
        key_uploads=config.key_uploads,
    )
    challenge = ChallengeClient(config.challenge_url, config.anonymizer_id, config.challenge_timeout)
    caller = Caller(config.party_tokens, DecisionBudget(config.model_dir / "decisions", config.decisions))

    app = falcon.App(
        middleware=[
            DrainUnreadBody(max(config.max_key_bytes, config.max_body_bytes)),
            RefundFailedDecisions(caller),
        ]
    )
    app.set_error_serializer(serialize_error)
    for kind, handler in ERROR_HANDLERS:
        app.add_error_handler(kind, handler)
    multipart = app.req_options.media_handlers[falcon.MEDIA_MULTIPART]
    multipart.parse_options.max_body_part_buffer_size = config.max_ciphertext_bytes
    protocol = (config, store, scoring, caller)
    app.add_route("/", resources.StatusResource(store))
    app.add_route("/openapi.json", resources.OpenApiResource())
    app.add_route("/fit", resources.FitResource(config, store, challenge, on_fitted=scoring.preload))
    app.add_route("/evaluate", resources.EvaluateResource(config, store, challenge))
    app.add_route("/predict", resources.PredictResource(*protocol))
    app.add_route("/fhe/specs", resources.FheSpecsResource(*protocol))
    app.add_route("/fhe/info", resources.FheInfoResource(*protocol))
    app.add_route("/fhe/keys", resources.KeysResource(*protocol))
    app.add_route("/fhe/keys/{key_id}", resources.PublicKeyResource(*protocol))
    app.add_route("/fhe/keys/{key_id}/inputs/{party}", resources.StagedInputResource(*protocol))
    return app
