"""The AnoMed anonymizer web app: `/`, `/fit`, `/evaluate`, `/predict`."""

import json
import os

import anomed_utils as utils
import falcon
import numpy as np
import requests
from anomed_anonymizer import batch_views

from .arrays import check_features, read_npz
from .config import Config
from .model import FHETreeAnonymizer
from .parties import LayoutError
from .store import ModelStore

DATA_SPLITS = ("tuning", "validation")


def read_body(req: falcon.Request, max_bytes: int) -> bytes:
    """The request body, or 413 if it exceeds `max_bytes` (declared or actually sent)."""
    if req.content_length is not None and req.content_length > max_bytes:
        raise falcon.HTTPContentTooLarge(description=f"The body exceeds {max_bytes} bytes.")
    body = req.bounded_stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise falcon.HTTPContentTooLarge(description=f"The body exceeds {max_bytes} bytes.")
    return body


def serving_model_or_503(store: ModelStore):
    """The currently published model, or 503 if none has been fitted yet."""
    model = store.current()
    if model is None:
        raise falcon.HTTPServiceUnavailable(
            description="This anonymizer is not fitted yet: POST /fit first."
        )
    return model


class StatusResource:
    """`GET /`: liveness plus which model version is served."""

    def __init__(self, store: ModelStore) -> None:
        self._store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        model = self._store.current()
        resp.media = {
            "message": "Anonymizer server is alive!",
            "fitted": model is not None,
            "model_version": model.version if model else None,
            "worker_pid": os.getpid(),
        }


class FitResource(utils.FitResource):
    """`POST /fit`: anomed-utils' fit semantics (file lock -> 503 while fitting), plus model info."""

    def __init__(self, config: Config, store: ModelStore) -> None:
        self._config = config
        self._store = store
        super().__init__(
            data_getter=self._training_data,
            model=FHETreeAnonymizer(config.parties, config.tree, store),
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
            FHETreeAnonymizer.check_training_data(X, y, self._config.parties)
        except (LayoutError, ValueError) as error:
            raise falcon.HTTPUnprocessableEntity(
                title="Training data incompatible", description=str(error)
            ) from error
        return {"X": X, "y": y}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        super().on_post(req, resp)
        model = self._store.current()
        resp.media = {**json.loads(resp.text), "model": model.info if model else None}
        resp.text = None


class PredictResource:
    """`POST /predict`: npz `X` -> npz `prediction`, the labels the FHE circuit computes."""

    def __init__(self, config: Config, store: ModelStore) -> None:
        self._config = config
        self._store = store

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        model = serving_model_or_503(self._store)
        batch_size = req.get_param_as_int(
            "batch_size", min_value=1, default=self._config.default_batch_size
        )
        body = read_body(req, self._config.max_body_bytes)
        X = check_features(read_npz(body, ["X"])["X"], model.n_features, self._config.max_rows)
        prediction = np.concatenate([model.predict(batch) for batch in batch_views(X, batch_size)])
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
        prediction = np.concatenate(
            [model.predict(b) for b in batch_views(X, self._config.default_batch_size)]
        )
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


def create_app(config: Config) -> falcon.App:
    """Build the anonymizer app and its collaborators from `config`."""
    config.model_dir.mkdir(parents=True, exist_ok=True)
    store = ModelStore(config.model_dir)
    app = falcon.App()
    app.add_route("/", StatusResource(store))
    app.add_route("/fit", FitResource(config, store))
    app.add_route("/predict", PredictResource(config, store))
    app.add_route("/evaluate", EvaluateResource(config, store))
    return app
