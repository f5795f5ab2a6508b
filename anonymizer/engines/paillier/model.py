"""The Paillier engine (ANONYMIZER_ENCRYPTION=paillier): the thermometer family on the Paillier
backend (backend.py), so that no party but the applicant holds a secret. The family's additive
models are what it serves: the backend has no table lookup (`Capabilities`)."""

from ..thermometer.model import ThermometerModel
from .backend import PaillierBackend


class PaillierModel(ThermometerModel):
    """A thermometer model computed under the applicant's Paillier public key."""

    engine = "paillier"
    backend_type = PaillierBackend
