"""The challenge, as the anonymizer's HTTP client: training data, a split's features, scoring."""

import logging

import anomed_utils as utils
import numpy as np
import requests

_logger = logging.getLogger(__name__)


class ChallengeUnavailable(RuntimeError):
    """The challenge did not answer."""


class ChallengeRefused(RuntimeError):
    """The challenge answered, but not with what was asked for."""


class ChallengeClient:
    """The anonymizer's side of AnoMed's challenge routes at `base_url`."""

    def __init__(self, base_url: str, anonymizer_id: str, timeout: float) -> None:
        self.base_url = base_url
        self.anonymizer_id = anonymizer_id
        self.timeout = timeout

    def training_data(self) -> dict[str, np.ndarray]:
        """npz `X`, `y` of the training split (anomed-utils raises falcon's 503 if unreachable)."""
        return utils.get_named_arrays_or_raise(
            data_url=f"{self.base_url}/data/anonymizer/training",
            expected_array_labels=["X", "y"],
            timeout=self.timeout,
        )

    def features(self, data_split: str) -> np.ndarray:
        """npz `X` of the tuning or validation split."""
        return utils.get_named_arrays_or_raise(
            data_url=f"{self.base_url}/data/anonymizer/{data_split}",
            expected_array_labels=["X"],
            timeout=self.timeout,
        )["X"]

    def submit(self, prediction: np.ndarray, data_split: str) -> dict:
        """Post the predictions of a split for scoring; the challenge's evaluation."""
        try:
            answer = requests.post(
                f"{self.base_url}/utility/anonymizer",
                data=utils.named_ndarrays_to_bytes({"prediction": prediction}),
                params={"anonymizer": self.anonymizer_id, "data_split": data_split},
                timeout=self.timeout,
            )
        except requests.RequestException as error:
            _logger.warning("the challenge is not reachable for evaluation: %s", error)
            raise ChallengeUnavailable("The challenge is not reachable for evaluation.") from None
        if answer.status_code != 201:
            raise ChallengeRefused(
                f"The challenge refused the evaluation ({answer.status_code}): {answer.text[:500]}"
            )
        return answer.json()
