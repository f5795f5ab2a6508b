"""What both engines do with their deployment artifacts: pin them by digest in the sealed metadata,
and run the circuit on the parties' serialized ciphertexts with errors a caller can answer 400."""

import base64
import binascii
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..state.vault import SealError
from . import keyset

_logger = logging.getLogger(__name__)


def artifact_digests(deployment: Path, pattern: str = "*") -> dict[str, str]:
    """SHA-256 of each artifact in `deployment` matching `pattern`, by file name."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(deployment.glob(pattern))
    }


def verified_artifact(path: Path, digests: dict[str, str]) -> bytes:
    """The bytes of a deployment artifact, or SealError if it is missing or not the one sealed."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SealError(f"The deployment artifact {path.name} is unreadable ({error.strerror}).") from None
    if hashlib.sha256(data).hexdigest() != digests.get(path.name):
        raise SealError(f"The deployment artifact {path.name} was modified.")
    return data


@dataclass(frozen=True)
class WarmUp:
    """What a throwaway client of the served specs gives an executor: ciphertexts of every
    party's shape, and the skeleton (keyset.skeleton) every party's evaluation keys must have."""

    inputs: list[bytes]
    key_skeleton: str

    def as_document(self) -> dict:
        """JSON-ready: the inputs in base64."""
        return {
            "inputs": [base64.b64encode(i).decode() for i in self.inputs],
            "key_skeleton": self.key_skeleton,
        }

    @classmethod
    def from_document(cls, document: dict) -> "WarmUp":
        """The inverse of as_document; ValueError if it is not one."""
        try:
            inputs = [base64.b64decode(i, validate=True) for i in document["inputs"]]
            return cls(inputs, str(document["key_skeleton"]))
        except (KeyError, TypeError, binascii.Error) as error:
            raise ValueError(f"Not a warm-up document: {error}") from None


def throwaway_warm_up(specs, arguments: list[np.ndarray]) -> WarmUp:
    """`arguments` encrypted under a fresh key made here and thrown away: inputs of the right
    shapes to run the circuit once with a party's new evaluation keys, whose garbage result is
    discarded (concrete prepares evaluation keys on their first run, ≈ 0.35 s here); and the
    structure of that key, which every uploaded key must share."""
    from concrete import fhe

    client = fhe.Client(specs)
    client.keys.generate()
    values = client.encrypt(*arguments)
    inputs = [value.serialize() for value in (values if isinstance(values, tuple) else (values,))]
    return WarmUp(inputs, keyset.skeleton(client.keys.evaluation.serialize()))


def run_on_ciphertexts(run, party_names: list[str], ciphertexts: list[bytes]) -> bytes:
    """`run(values)` on the deserialized ciphertexts (argument order); the serialized result.

    Raises ValueError for ciphertexts that do not parse or do not fit their argument.
    """
    from concrete import fhe

    values = []
    for name, ciphertext in zip(party_names, ciphertexts):
        try:
            values.append(fhe.Value.deserialize(ciphertext))
        except RuntimeError as error:
            _logger.info("malformed ciphertext of %r: %s", name, error)
            raise ValueError(f"The ciphertext of {name!r} is not a serialized concrete value.") from None
    try:
        result = run(values)
    except RuntimeError as error:
        _logger.info("ciphertexts refused by the circuit: %s", str(error).splitlines()[0])
        raise ValueError(
            f"The ciphertexts do not fit the circuit's arguments {party_names} (shape, bit width or "
            "keys of another model): fetch /fhe/info and /fhe/specs and encrypt again."
        ) from None
    return result.serialize()
