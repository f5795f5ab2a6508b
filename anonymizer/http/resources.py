"""The routes as thin resources: each translates HTTP to calls on its injected collaborators."""

import json
import secrets
from pathlib import Path

import anomed_utils as utils
import falcon

from ..config import Config, parse_flag
from ..engines.base import DECIDE, REASONS
from ..engines.runtime import release_freed_memory
from ..parties import LayoutError
from ..service.challenge import ChallengeClient
from ..service.prediction import predict_in_batches
from ..service.scoring import EncryptedScoring
from ..service.training import Anonymizer, check_training_data
from ..state.models import ModelStore
from ..state.staged import MAX_USES
from ..state.vault import ModelKeyError
from ..wire import ErrorCode, explain_function, rows_function
from .access import Caller
from .inputs import ArrayLimits, check_features, read_body, read_encrypted_form, read_features

DATA_SPLITS = ("tuning", "validation")


def _yes(text: str, name: str) -> bool:
    """A yes/no form field (config.parse_flag's rules; empty: no); anything else 400."""
    try:
        return parse_flag(text, f"The field {name!r}")
    except ValueError as error:
        raise falcon.HTTPBadRequest(description=f"{error}.") from None


def requested_function(fields: dict[str, str]) -> str:
    """What an encrypted prediction asks for: a decision, its reasons (`reasons=1`), the decision
    at every level of one feature (`explain=<feature column>`) or for each of several rows of the
    applicant (`rows=<count>`); 400 for more than one or a malformed number."""
    wants_reasons = _yes(fields.get("reasons", ""), "reasons")
    explain, rows = fields.get("explain", ""), fields.get("rows", "")
    if sum(map(bool, (wants_reasons, explain, rows))) > 1:
        raise falcon.HTTPBadRequest(description="Ask for one of 'reasons', 'explain' and 'rows'.")
    if explain:
        return explain_function(_small_number(explain, "explain", "a feature's column index"))
    if rows:
        return rows_function(_small_number(rows, "rows", "how many rows of the applicant it holds"))
    return REASONS if wants_reasons else DECIDE


def _small_number(text: str, name: str, meaning: str) -> int:
    """A form field's whole number of at most 6 digits; 400 otherwise."""
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        raise falcon.HTTPBadRequest(description=f"The field {name!r} is {meaning}.")
    return int(text)


def require_admin(req: falcon.Request, config: Config) -> None:
    """401 unless the request presents the admin token (when ANONYMIZER_ADMIN_TOKEN is set)."""
    if config.admin_token is not None and not config.admin_token.admits(req.get_header("Authorization")):
        raise falcon.HTTPUnauthorized(
            title="Admin token required",
            description="This server guards /fit and /evaluate: send 'Authorization: Bearer <admin token>'.",
            challenges=['Bearer realm="admin"'],
            code=ErrorCode.TOKEN_REQUIRED,
        )


def serving_model_or_503(store: ModelStore):
    """The currently published model, or 503 if none is fitted or the stored one is unreadable."""
    model = store.current()
    if model is None:
        raise falcon.HTTPServiceUnavailable(
            description="This anonymizer is not fitted yet: POST /fit first.", code=ErrorCode.NOT_FITTED
        )
    return model


class OpenApiResource:
    """`GET /openapi.json`: the specification kept in the repository beside this module."""

    def __init__(self) -> None:
        self._document = (Path(__file__).parent / "openapi.json").read_bytes()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self._document
        resp.content_type = falcon.MEDIA_JSON


class StatusResource:
    """`GET /`: liveness (always 200), the served version, and any problem with the stored state."""

    def __init__(self, store: ModelStore) -> None:
        self._store = store
        self._worker = secrets.token_hex(4)  # tells workers apart without naming a process

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = self._store.state()
        resp.media = {
            "message": "Anonymizer server is alive!",
            "fitted": state["state"] == "serving",
            **state,
            "model_key_set": self._store.key_source.is_set,
            "worker": self._worker,
        }


class FitResource(utils.FitResource):
    """`POST /fit`: anomed-utils' fit semantics (file lock -> 503 while fitting), plus model info."""

    def __init__(
        self, config: Config, store: ModelStore, challenge: ChallengeClient, on_fitted=lambda: None
    ) -> None:
        self._config = config
        self._store = store
        self._challenge = challenge
        self._on_fitted = on_fitted  # e.g. EncryptedScoring.preload
        super().__init__(
            data_getter=self._training_data,
            model=Anonymizer(config.parties, config.tree, store, config.selection, config.engine),
            model_filepath=store.pointer_path,
        )

    def _training_data(self) -> dict:
        # anomed-anonymizer's getter answers 500 for data that does not fit; that is a 422 here
        arrays = self._challenge.training_data()
        X, y = arrays["X"], arrays["y"]
        try:
            check_training_data(X, y, self._config.parties)
        except (LayoutError, ValueError) as error:
            raise falcon.HTTPUnprocessableEntity(
                title="Training data incompatible", description=str(error)
            ) from error
        return {"X": X, "y": y}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_admin(req, self._config)
        try:
            super().on_post(req, resp)
        except ModelKeyError as error:
            raise falcon.HTTPServiceUnavailable(
                title="Model key unusable", description=str(error), code=ErrorCode.STATE_UNAVAILABLE
            ) from error
        except ValueError as error:  # data that passed the checks but no model could be built
            raise falcon.HTTPUnprocessableEntity(
                title="No model could be trained", description=str(error)
            ) from error
        finally:
            release_freed_memory()
        model = self._store.current()
        self._on_fitted()
        # anomed-utils' FitResource writes its answer as text; ours adds the trained model
        resp.media = {**json.loads(resp.text), "model": model.info if model else None}
        fallback = ((model.info if model else {}).get("selection") or {}).get("fallback")
        if fallback:
            resp.media["warning"] = f"Model selection fell back: {fallback}."
        resp.text = None


class EvaluateResource:
    """`POST /evaluate?data_split=...`: predict the challenge's split and submit it for scoring."""

    def __init__(self, config: Config, store: ModelStore, challenge: ChallengeClient) -> None:
        self._config = config
        self._store = store
        self._challenge = challenge

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_admin(req, self._config)
        data_split = req.get_param("data_split", required=True)
        if data_split not in DATA_SPLITS:
            raise falcon.HTTPBadRequest(
                description=f"data_split must be one of {list(DATA_SPLITS)}, not {data_split!r}."
            )
        model = serving_model_or_503(self._store)
        X = self._challenge.features(data_split)
        try:
            X = check_features(X, model.n_features, max_rows=X.shape[0] or 1)
        except falcon.HTTPError as error:
            raise falcon.HTTPBadGateway(
                description=f"The challenge's {data_split} data is unusable: {error.description}"
            ) from error
        prediction = predict_in_batches(model, X, self._config.default_batch_size)
        resp.media = {
            "message": f"The anonymizer has been evaluated based on {data_split} data.",
            "evaluation": self._challenge.submit(prediction, data_split),
            "model_version": model.version,
        }
        resp.status = falcon.HTTP_CREATED


class _EncryptedProtocolResource:
    """The collaborators every route of the encrypted protocol needs."""

    def __init__(self, config: Config, store: ModelStore, scoring: EncryptedScoring, caller: Caller) -> None:
        self._config = config
        self._store = store
        self._scoring = scoring
        self._caller = caller


class PredictResource(_EncryptedProtocolResource):
    """`POST /predict`: npz `X` -> npz `prediction`; multipart ciphertexts -> encrypted result."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        model = serving_model_or_503(self._store)
        if req.content_type and req.content_type.startswith(falcon.MEDIA_MULTIPART):
            with self._scoring.admit():  # a full server refuses before parsing the body
                self._predict_encrypted(req, resp, model)
        else:
            self._predict_plaintext(req, resp, model)

    def _predict_encrypted(self, req: falcon.Request, resp: falcon.Response, model) -> None:
        owner = self._caller.owner(req)
        self._caller.check_budget(owner)  # 429 before the body once the owner's decisions are spent
        fields, ciphertexts = read_encrypted_form(req, model.layout, self._config.max_ciphertext_bytes)
        self._caller.check_slots(req, [model.layout.names[i] for i in ciphertexts])  # 403: not theirs
        key_id = fields.get("key_id")
        if not key_id:
            raise falcon.HTTPBadRequest(description="The multipart body needs a 'key_id' field.")
        self._scoring.check_key(key_id, model, fields.get("model_version"), fields.get("keys_digest"))
        if self._caller.authenticates:
            self._scoring.check_owner(key_id, owner)
        function = requested_function(fields)
        self._scoring.check_offered(model, function)  # 400 before any decision is spent
        decisions = model.decisions_in(function)
        self._caller.spend_decision(req, key_id, owner, decisions)  # 429 if spent; a failure refunds
        result, seconds = self._scoring.predict(key_id, model, ciphertexts, function)
        resp.set_header("X-FHE-Function", function)
        if not model.capabilities.hides_execution_time:  # Paillier: the time could speak of the blinding
            resp.set_header("X-FHE-Execution-Seconds", f"{seconds:.4f}")
        resp.set_header("X-Model-Version", model.version)
        resp.data = result
        resp.content_type = "application/octet-stream"
        resp.status = falcon.HTTP_CREATED

    def _predict_plaintext(self, req: falcon.Request, resp: falcon.Response, model) -> None:
        config = self._config
        batch_size = req.get_param_as_int(
            "batch_size", min_value=1, max_value=config.max_batch_size, default=config.default_batch_size
        )
        body = read_body(req, config.max_body_bytes)
        X = read_features(body, model.n_features, ArrayLimits(config.max_rows, config.max_array_bytes))
        prediction = predict_in_batches(model, X, batch_size)
        resp.data = utils.named_ndarrays_to_bytes({"prediction": prediction})
        resp.content_type = "application/octet-stream"
        resp.status = falcon.HTTP_CREATED


class FheSpecsResource(_EncryptedProtocolResource):
    """`GET /fhe/specs`: the served circuit's client specs (what its engine's client loads)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._caller.owner(req)
        model = serving_model_or_503(self._store)
        every_function = req.get_param("functions") == "all"
        resp.data = model.client_specs(every_function)
        resp.content_type = "application/octet-stream"
        resp.set_header("X-Model-Version", model.version)


class FheInfoResource(_EncryptedProtocolResource):
    """`GET /fhe/info`: what a party needs to encrypt its columns for the served model."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._caller.owner(req)
        model = serving_model_or_503(self._store)
        resp.media = self._scoring.info_document(model, self._config.feature_names).to_document()


class KeysResource(_EncryptedProtocolResource):
    """`POST /fhe/keys`: register serialized evaluation keys for the served model."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        owner = self._caller.owner(req)
        model = serving_model_or_503(self._store)
        claim = req.get_param("model_version"), req.get_param("keys_digest")
        self._scoring.check_upload(model, *claim)  # before reading a large body
        limit = min(self._config.max_key_bytes, model.max_key_bytes or self._config.max_key_bytes)
        read_body(req, limit, read=False)  # 413 on a declared size over the scheme's, before a slot
        with self._scoring.admit_upload():  # 429 beyond the uploads this worker checks at once
            body = read_body(req, limit)
            key_id = self._scoring.register_key(body, model, claim[0], owner, claim[1])
        resp.media = {"key_id": key_id, "model_version": model.version}
        resp.status = falcon.HTTP_CREATED


class PublicKeyResource(_EncryptedProtocolResource):
    """`GET /fhe/keys/{key_id}`: the applicant's Paillier public key, for its co-parties."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, key_id: str) -> None:
        self._caller.owner(req)  # any party's token: co-parties are other owners
        model = serving_model_or_503(self._store)
        resp.data = self._scoring.public_key(key_id, model)
        resp.content_type = falcon.MEDIA_JSON
        resp.set_header("X-Model-Version", model.version)


class StagedInputResource(_EncryptedProtocolResource):
    """`PUT /fhe/keys/{key_id}/inputs/{party}`: one party stages its ciphertext."""

    def on_put(self, req: falcon.Request, resp: falcon.Response, key_id: str, party: str) -> None:
        self._caller.owner(req)  # any party's token: the key id is shared with the co-parties
        model = serving_model_or_503(self._store)
        if party not in model.layout.names:
            raise falcon.HTTPNotFound(description=f"No party {party!r}; parties: {model.layout.names}.")
        self._caller.check_slots(req, [party])  # 403 before anything is read or stored
        claim = req.get_param("model_version"), req.get_param("keys_digest")
        self._scoring.check_key(key_id, model, *claim)  # before the body
        uses = req.get_param_as_int("uses", min_value=1, max_value=MAX_USES, default=1)
        ciphertext = read_body(req, self._config.max_ciphertext_bytes)
        if not ciphertext:
            raise falcon.HTTPBadRequest(description="The ciphertext body is empty.")
        self._scoring.stage(key_id, model, party, ciphertext, uses)
        resp.media = {"key_id": key_id, "party": party, "staged": True, "uses": uses}
        resp.status = falcon.HTTP_CREATED
