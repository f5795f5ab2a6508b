"""The AnoMed anonymizer web app: `/`, `/fit`, `/evaluate`, `/predict`."""

import json
import logging
import os
import time
from pathlib import Path

import anomed_utils as utils
import falcon
import numpy as np
import requests
from anomed_anonymizer import batch_views

from .access import Caller
from .arrays import check_features, read_npz
from .config import Config
from .fhe_runtime import start_fhe_runtime
from .executors import Busy, ExecutorUnavailable, Executors, open_executors
from .keyholder import StaleJob
from .keystore import KeyStore, KeyTooLarge, NotOwner, RegistryFull, UnknownKey
from .parties import LayoutError
from .store import ModelStore, StoreUnavailable
from .trainer import FHETreeAnonymizer, check_training_data
from .vault import ModelKeyError, ModelKeySource, SealError

_logger = logging.getLogger(__name__)

DATA_SPLITS = ("tuning", "validation")
TEXT_FIELDS = ("key_id", "model_version")


def read_body(req: falcon.Request, max_bytes: int) -> bytes:
    """The request body, or 413 if it exceeds `max_bytes` (declared or actually sent)."""
    if req.content_length is not None and req.content_length > max_bytes:
        raise falcon.HTTPContentTooLarge(description=f"The body exceeds {max_bytes} bytes.")
    body = req.bounded_stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise falcon.HTTPContentTooLarge(description=f"The body exceeds {max_bytes} bytes.")
    return body


def serving_model_or_503(store: ModelStore):
    """The currently published model, or 503 if none is fitted or the stored one is unreadable."""
    model = store.current()
    if model is None:
        raise falcon.HTTPServiceUnavailable(
            description="This anonymizer is not fitted yet: POST /fit first."
        )
    return model


def predict_in_batches(model, X: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's labels for X, computed `batch_size` rows at a time to bound memory."""
    return np.concatenate([model.predict(batch) for batch in batch_views(X, batch_size)])


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

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = self._store.state()
        resp.media = {
            "message": "Anonymizer server is alive!",
            "fitted": state["state"] == "serving",
            **state,
            "model_key": self._store.key_source.describe(),
            "worker_pid": os.getpid(),
        }


class FitResource(utils.FitResource):
    """`POST /fit`: anomed-utils' fit semantics (file lock -> 503 while fitting), plus model info."""

    def __init__(self, config: Config, store: ModelStore) -> None:
        self._config = config
        self._store = store
        super().__init__(
            data_getter=self._training_data,
            model=FHETreeAnonymizer(
                config.parties, config.tree, store, config.selection, config.engine
            ),
            model_filepath=store.pointer_path,
        )

    def _training_data(self) -> dict[str, np.ndarray]:
        # anomed-anonymizer's getter answers 500 for data that does not fit; that is a 422 here
        arrays = utils.get_named_arrays_or_raise(
            data_url=f"{self._config.challenge_url}/data/anonymizer/training",
            expected_array_labels=["X", "y"],
            timeout=self._config.challenge_timeout,
        )
        X, y = arrays["X"], arrays["y"]
        try:
            check_training_data(X, y, self._config.parties)
        except (LayoutError, ValueError) as error:
            raise falcon.HTTPUnprocessableEntity(
                title="Training data incompatible", description=str(error)
            ) from error
        return {"X": X, "y": y}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            super().on_post(req, resp)
        except ModelKeyError as error:
            raise falcon.HTTPServiceUnavailable(
                title="Model key unusable", description=str(error)
            ) from error
        except ValueError as error:  # data that passed the checks but no model could be built
            raise falcon.HTTPUnprocessableEntity(
                title="No model could be trained", description=str(error)
            ) from error
        model = self._store.current()
        resp.media = {**json.loads(resp.text), "model": model.info if model else None}
        fallback = ((model.info if model else {}).get("selection") or {}).get("fallback")
        if fallback:
            resp.media["warning"] = f"Model selection fell back: {fallback}."
        resp.text = None


class _EncryptedProtocolResource:
    """The collaborators every route of the encrypted protocol needs."""

    def __init__(
        self, config: Config, store: ModelStore, keys: KeyStore, caller: Caller, executors: Executors
    ) -> None:
        self._config = config
        self._store = store
        self._keys = keys
        self._caller = caller
        self._executors = executors


class PredictResource(_EncryptedProtocolResource):
    """`POST /predict`: npz `X` -> npz `prediction`; multipart ciphertexts -> encrypted result."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        model = serving_model_or_503(self._store)
        if req.content_type and req.content_type.startswith(falcon.MEDIA_MULTIPART):
            self._predict_encrypted(req, resp, model)
        else:
            self._predict_plaintext(req, resp, model)

    def _predict_encrypted(self, req: falcon.Request, resp: falcon.Response, model) -> None:
        owner = self._caller.owner(req)
        fields, ciphertexts = read_encrypted_form(req, model.layout, self._config)
        key_id = fields.get("key_id")
        if not key_id:
            raise falcon.HTTPBadRequest(description="The multipart body needs a 'key_id' field.")
        check_version(self._keys, key_id, model, fields.get("model_version"))
        if self._caller.authenticates:
            owner_or_403(self._keys, key_id, owner)
        missing = [i for i in range(len(model.layout.names)) if i not in ciphertexts]
        staged = self._keys.take_staged(key_id, missing)
        inputs = {**ciphertexts, **staged}
        still_missing = [model.layout.names[i] for i in missing if i not in staged]
        if still_missing:
            self._keys.put_back(key_id, staged)
            raise falcon.HTTPBadRequest(
                title="Missing party input",
                description=f"No ciphertext sent or staged for {still_missing}.",
            )
        started = time.perf_counter()
        try:
            result = self._executors.run(
                key_id, model.version, [inputs[i] for i in range(len(inputs))]
            )
        except ValueError as error:  # ciphertexts that do not fit the circuit
            self._keys.put_back(key_id, staged)
            raise falcon.HTTPBadRequest(title="Bad ciphertext", description=str(error)) from error
        except Exception:
            self._keys.put_back(key_id, staged)  # a failed job consumes nothing
            raise
        resp.set_header("X-FHE-Execution-Seconds", f"{time.perf_counter() - started:.4f}")
        resp.set_header("X-Model-Version", model.version)
        resp.data = result
        resp.content_type = "application/octet-stream"
        resp.status = falcon.HTTP_CREATED

    def _predict_plaintext(self, req: falcon.Request, resp: falcon.Response, model) -> None:
        batch_size = req.get_param_as_int(
            "batch_size", min_value=1, default=self._config.default_batch_size
        )
        body = read_body(req, self._config.max_body_bytes)
        X = check_features(read_npz(body, ["X"])["X"], model.n_features, self._config.max_rows)
        prediction = predict_in_batches(model, X, batch_size)
        resp.data = utils.named_ndarrays_to_bytes({"prediction": prediction})
        resp.content_type = "application/octet-stream"
        resp.status = falcon.HTTP_CREATED


class EvaluateResource:
    """`POST /evaluate?data_split=...`: predict the challenge's split and submit it for scoring."""

    def __init__(self, config: Config, store: ModelStore) -> None:
        self._config = config
        self._store = store

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data_split = req.get_param("data_split", required=True)
        if data_split not in DATA_SPLITS:
            raise falcon.HTTPBadRequest(
                description=f"data_split must be one of {list(DATA_SPLITS)}, not {data_split!r}."
            )
        model = serving_model_or_503(self._store)
        challenge = self._config.challenge_url
        X = utils.get_named_arrays_or_raise(
            data_url=f"{challenge}/data/anonymizer/{data_split}",
            expected_array_labels=["X"],
            timeout=self._config.challenge_timeout,
        )["X"]
        try:
            X = check_features(X, model.n_features, max_rows=X.shape[0] or 1)
        except falcon.HTTPError as error:
            raise falcon.HTTPBadGateway(
                description=f"The challenge's {data_split} data is unusable: {error.description}"
            ) from error
        prediction = predict_in_batches(model, X, self._config.default_batch_size)
        try:
            answer = requests.post(
                f"{challenge}/utility/anonymizer",
                data=utils.named_ndarrays_to_bytes({"prediction": prediction}),
                params={"anonymizer": self._config.anonymizer_id, "data_split": data_split},
                timeout=self._config.challenge_timeout,
            )
        except requests.RequestException as error:
            raise falcon.HTTPServiceUnavailable(
                description=f"The challenge is not reachable for evaluation: {error}"
            ) from error
        if answer.status_code != 201:
            raise falcon.HTTPBadGateway(
                description=f"The challenge refused the evaluation ({answer.status_code}): "
                f"{answer.text[:500]}"
            )
        resp.media = {
            "message": f"The anonymizer has been evaluated based on {data_split} data.",
            "evaluation": answer.json(),
            "model_version": model.version,
        }
        resp.status = falcon.HTTP_CREATED


def read_encrypted_form(req: falcon.Request, layout, config: Config):
    """Text fields and {party index: ciphertext} of a multipart body; 4xx for anything odd."""
    if req.content_length is None:
        raise falcon.HTTPLengthRequired(description="Send a Content-Length with multipart bodies.")
    limit = config.max_ciphertext_bytes * (len(layout.names) + 1)
    if req.content_length > limit:
        raise falcon.HTTPContentTooLarge(description=f"The body exceeds {limit} bytes.")
    fields: dict[str, str] = {}
    ciphertexts: dict[int, bytes] = {}
    try:
        for part in req.get_media():
            name = part.name
            if name in fields or (name in layout.names and layout.index_of(name) in ciphertexts):
                raise falcon.HTTPBadRequest(description=f"The part {name!r} appears twice.")
            if name in TEXT_FIELDS:
                fields[name] = part.get_text() or ""
            elif name in layout.names:
                ciphertexts[layout.index_of(name)] = part.get_data()
            else:
                raise falcon.HTTPBadRequest(
                    description=f"Unknown part {name!r}: expected {list(TEXT_FIELDS)} "
                    f"and parties {layout.names}."
                )
    except falcon.MediaMalformedError as error:
        raise falcon.HTTPBadRequest(
            title="Malformed multipart body", description=str(error.description)
        ) from error
    return fields, ciphertexts


def check_version(keys: KeyStore, key_id: str, model, model_version: str | None) -> None:
    """404 if there is no usable key `key_id`; 409 if it or the claimed version is stale."""
    try:
        key_version = keys.model_version(key_id)
    except UnknownKey as error:
        raise falcon.HTTPNotFound(title="Unknown key", description=error.reason) from None
    if key_version != model.version or model_version not in (None, "", model.version):
        raise falcon.HTTPConflict(
            title="Stale key or ciphertext",
            description=f"Made for model {model_version or key_version}; the served model is "
            f"{model.version}. Fetch /fhe/specs, generate new keys and upload them.",
        )


def owner_or_403(keys: KeyStore, key_id: str, owner: str) -> None:
    """403 unless `owner` uploaded the key (404 if it vanished meanwhile)."""
    try:
        keys.check_owner(key_id, owner)
    except NotOwner as error:
        raise falcon.HTTPForbidden(title="Not your key", description=str(error)) from None
    except UnknownKey as error:
        raise falcon.HTTPNotFound(title="Unknown key", description=error.reason) from None


def warm_up(executors: Executors, key_id: str) -> None:
    """Have the key's executor deserialize it now; if that fails, its first job will retry."""
    try:
        executors.warm(key_id)
    except (ExecutorUnavailable, UnknownKey, StaleJob, StoreUnavailable, ValueError) as error:
        _logger.warning("could not warm key %s up: %s", key_id, error)


class FheSpecsResource(_EncryptedProtocolResource):
    """`GET /fhe/specs`: the served circuit's client specs (concrete `ClientSpecs` bytes)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._caller.owner(req)
        model = serving_model_or_503(self._store)
        resp.data = model.client_specs()
        resp.content_type = "application/octet-stream"
        resp.set_header("X-Model-Version", model.version)


class FheInfoResource(_EncryptedProtocolResource):
    """`GET /fhe/info`: what a party needs to encrypt its columns for the served model."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._caller.owner(req)
        model = serving_model_or_503(self._store)
        resp.media = {
            "model_version": model.version,
            "parties": model.layout.to_dict(),
            "n_features": model.n_features,
            "feature_names": self._config.feature_names,
            "classes": model.classes.tolist(),
            "pbs_count": model.info.get("pbs_count"),
            "tree_depth": model.info.get("tree_depth"),
            "tree_leaves": model.info.get("tree_leaves"),
            **model.public_description(),
        }


class KeysResource(_EncryptedProtocolResource):
    """`POST /fhe/keys`: register serialized evaluation keys for the served model."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        owner = self._caller.owner(req)
        model = serving_model_or_503(self._store)
        claimed_version = req.get_param("model_version")
        if claimed_version not in (None, model.version):
            raise falcon.HTTPConflict(
                title="Stale key",
                description=f"These keys were made for model {claimed_version}; the served model "
                f"is {model.version}. Fetch /fhe/specs and generate new keys.",
            )
        body = read_body(req, self._config.max_key_bytes)
        try:
            key_id = self._keys.add(body, model.version, owner)
        except KeyTooLarge as error:
            raise falcon.HTTPContentTooLarge(description=str(error)) from None
        except RegistryFull as error:
            raise falcon.HTTPTooManyRequests(
                title="Key registry full", description=str(error), retry_after=error.retry_after
            ) from None
        except ValueError as error:
            raise falcon.HTTPBadRequest(title="Bad evaluation keys", description=str(error))
        warm_up(self._executors, key_id)
        resp.media = {"key_id": key_id, "model_version": model.version}
        resp.status = falcon.HTTP_CREATED


class StagedInputResource(_EncryptedProtocolResource):
    """`PUT /fhe/keys/{key_id}/inputs/{party}`: one party stages its ciphertext."""

    def on_put(self, req: falcon.Request, resp: falcon.Response, key_id: str, party: str) -> None:
        self._caller.owner(req)  # any party's token: the key id is shared with the co-parties
        model = serving_model_or_503(self._store)
        if party not in model.layout.names:
            raise falcon.HTTPNotFound(description=f"No party {party!r}; parties: {model.layout.names}.")
        check_version(self._keys, key_id, model, req.get_param("model_version"))
        ciphertext = read_body(req, self._config.max_ciphertext_bytes)
        if not ciphertext:
            raise falcon.HTTPBadRequest(description="The ciphertext body is empty.")
        try:
            self._keys.stage(key_id, model.layout.index_of(party), ciphertext)
        except UnknownKey as error:
            raise falcon.HTTPNotFound(title="Unknown key", description=error.reason) from None
        resp.media = {"key_id": key_id, "party": party, "staged": True}
        resp.status = falcon.HTTP_CREATED


def refuse_unreadable_state(req, resp, error: StoreUnavailable | SealError, params) -> None:
    """Stored state that is unreadable or fails authentication is never served: 503 until repaired."""
    raise falcon.HTTPServiceUnavailable(
        title="Stored model unavailable", description=f"{error} Refit (POST /fit)."
    )


def refuse_busy(req, resp, error: Busy, params) -> None:
    """The encrypted queue is full: 429 with the expected wait."""
    raise falcon.HTTPTooManyRequests(
        title="Encrypted queue full", description=str(error), retry_after=error.retry_after
    )


def refuse_unavailable_executor(req, resp, error: ExecutorUnavailable, params) -> None:
    """No executor could take the job (restarting, or died mid-job): 503, retry shortly."""
    raise falcon.HTTPServiceUnavailable(
        title="Encrypted executor unavailable", description=str(error), retry_after=2
    )


def refuse_job(req, resp, error: UnknownKey | StaleJob, params) -> None:
    """An encrypted job the executor refused: its key vanished (404) or the model changed (409)."""
    if isinstance(error, UnknownKey):
        raise falcon.HTTPNotFound(title="Unknown key", description=error.reason)
    raise falcon.HTTPConflict(title="Stale key or ciphertext", description=str(error))


def create_app(config: Config, executors: Executors | None = None) -> falcon.App:
    """Build the anonymizer app and its collaborators from `config` (executors: see executors.py)."""
    start_fhe_runtime()
    config.model_dir.mkdir(parents=True, exist_ok=True)
    key_source = ModelKeySource(config.model_dir, config.model_key, config.model_key_file)
    key_source.warn_if_beside_models()
    store = ModelStore(config.model_dir, key_source)
    keys = KeyStore(config.model_dir / "keys", config.key_quota)
    caller = Caller(config.party_tokens)
    executors = executors or open_executors(config)
    app = falcon.App()
    app.add_error_handler(StoreUnavailable, refuse_unreadable_state)
    app.add_error_handler(SealError, refuse_unreadable_state)
    app.add_error_handler(Busy, refuse_busy)
    app.add_error_handler(ExecutorUnavailable, refuse_unavailable_executor)
    app.add_error_handler(UnknownKey, refuse_job)
    app.add_error_handler(StaleJob, refuse_job)
    multipart = app.req_options.media_handlers[falcon.MEDIA_MULTIPART]
    multipart.parse_options.max_body_part_buffer_size = config.max_ciphertext_bytes
    app.add_route("/", StatusResource(store))
    app.add_route("/openapi.json", OpenApiResource())
    app.add_route("/fit", FitResource(config, store))
    protocol = (config, store, keys, caller, executors)
    app.add_route("/predict", PredictResource(*protocol))
    app.add_route("/evaluate", EvaluateResource(config, store))
    app.add_route("/fhe/specs", FheSpecsResource(*protocol))
    app.add_route("/fhe/info", FheInfoResource(*protocol))
    app.add_route("/fhe/keys", KeysResource(*protocol))
    app.add_route("/fhe/keys/{key_id}/inputs/{party}", StagedInputResource(*protocol))
    return app
