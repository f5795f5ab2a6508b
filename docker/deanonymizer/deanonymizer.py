"""The attacker of `make container-test`, built like AnoMed's example deanonymizer: ART's
`MembershipInferenceBlackBox` querying http://$ATTACK_TARGET_HOST/predict through
anomed-deanonymizer's `WebClassifier`, served by its MIA server factory.

Environment: CHALLENGE_HOST, ATTACK_TARGET_HOST, ATTACK_N_FEATURES, ATTACK_N_CLASSES (2),
ATTACK_MODEL (rf), ANONYMIZER_ID (fhe_anonymizer).
"""

import os

import anomed_deanonymizer
import numpy as np
from art.attacks.inference.membership_inference import MembershipInferenceBlackBox

N_FEATURES = int(os.environ["ATTACK_N_FEATURES"])
CHALLENGE = os.environ["CHALLENGE_HOST"]


class FeatureValidator:
    """Rejects feature arrays the target cannot take (a class: the attack gets pickled)."""

    def __call__(self, X: np.ndarray) -> None:
        if X.ndim != 2 or X.shape[1] != N_FEATURES:
            raise ValueError(f"Feature array needs shape (n_samples, {N_FEATURES}), got {X.shape}.")


target = anomed_deanonymizer.WebClassifier(
    url=f"http://{os.environ['ATTACK_TARGET_HOST']}/predict",
    input_shape=(N_FEATURES,),
    nb_classes=int(os.environ.get("ATTACK_N_CLASSES", "2")),
)
attack = anomed_deanonymizer.ARTWrapper(
    art_mia=MembershipInferenceBlackBox(
        estimator=target, attack_model_type=os.environ.get("ATTACK_MODEL", "rf")
    ),
    input_validator=FeatureValidator(),
)
application = anomed_deanonymizer.supervised_learning_MIA_server_factory(
    anonymizer_identifier=os.environ.get("ANONYMIZER_ID", "fhe_anonymizer"),
    deanonymizer_identifier="container_deanonymizer",
    deanonymizer_obj=attack,
    model_filepath="/persistent_data/deanonymizer.pkl",
    default_batch_size=64,
    member_url=f"http://{CHALLENGE}/data/deanonymizer/members",
    nonmember_url=f"http://{CHALLENGE}/data/deanonymizer/non-members",
    evaluation_data_url=f"http://{CHALLENGE}/data/attack-success-evaluation",
    model_loader=anomed_deanonymizer.unpickle_deanonymizer,
    utility_evaluation_url=f"http://{CHALLENGE}/utility/deanonymizer",
)
