"""A local AnoMed membership-inference challenge built from anomed-challenge's own resources.

It serves every route of `anomed_challenge.supervised_learning_MIA_challenge_server_factory`, but
keeps evaluation results in memory (shown at `GET /results`) instead of posting them to an AnoMed
host, which the library's demo submitters do and which fails offline.
"""

import os
import threading
import time

import anomed_challenge as challenge
import falcon
import numpy as np
from anomed_challenge.challenge_server import (
    DynamicNumpyDataResource,
    StaticJSONResource,
    StaticNumpyDataResource,
    UtilityResource,
)

from .dataset import FEATURE_NAMES, PARTY_LAYOUT, make_credit_data

DATA_SPLITS = ("tuning", "validation")


class ResultsLog:
    """Evaluation results the challenge would have submitted to AnoMed, newest last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict] = []

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

        return submit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._lock:
            resp.media = {"results": list(self._entries)}


def build_challenge(n_rows: int, seed: int) -> challenge.SupervisedLearningMIAChallenge:
    """Split the synthetic data 60/20/20 into training, tuning and validation."""
    X, y = make_credit_data(n_rows, seed)
    n_train, n_tune = int(0.6 * n_rows), int(0.2 * n_rows)
    n_val = n_rows - n_train - n_tune
    datasets = [
        challenge.InMemoryNumpyArrays(X[a:b], y[a:b])
        for a, b in [(0, n_train), (n_train, n_train + n_tune), (n_train + n_tune, n_rows)]
    ]
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
            raise falcon.HTTPBadRequest(description=str(error))

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


def create_app(n_rows: int = 10_000, seed: int = 0) -> falcon.App:
    """The challenge web app: the library factory's routes plus `GET /results` and `GET /info`."""
    challenge_obj = build_challenge(n_rows, seed)
    params = _SplitParams(challenge_obj)
    results = ResultsLog()
    app = falcon.App()
    app.add_route("/", StaticJSONResource(dict(message="Challenge server is alive!")))
    app.add_route(
        "/info",
        StaticJSONResource(
            dict(rows=n_rows, seed=seed, feature_names=FEATURE_NAMES, parties=PARTY_LAYOUT)
        ),
    )
    app.add_route("/data/anonymizer/training", StaticNumpyDataResource(challenge_obj.training_data))
    for split in DATA_SPLITS:
        dataset = getattr(challenge_obj, f"{split}_data")
        app.add_route(
            f"/data/anonymizer/{split}",
            StaticNumpyDataResource(challenge.discard_targets(dataset)),
        )
    app.add_route("/data/deanonymizer/members", StaticNumpyDataResource(challenge_obj.members))
    app.add_route(
        "/data/deanonymizer/non-members", StaticNumpyDataResource(challenge_obj.non_members)
    )
    app.add_route(
        "/data/attack-success-evaluation", DynamicNumpyDataResource(params.attack_dataset)
    )
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
            evaluator=_bad_request_on_value_error(
                challenge_obj.evaluate_membership_inference_attack
            ),
            submitter=results.submitter("deanonymizer"),
        ),
    )
    app.add_route("/results", results)
    return app


def create_app_from_env(environ=os.environ) -> falcon.App:
    """Build the app from `STUB_ROWS` (default 10000) and `STUB_SEED` (default 0)."""
    return create_app(
        n_rows=int(environ.get("STUB_ROWS", "10000")), seed=int(environ.get("STUB_SEED", "0"))
    )

