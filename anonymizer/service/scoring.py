"""Encrypted scoring: key registration, staging, and the staged-input transaction of a prediction.

Every check a request of the encrypted protocol needs (a usable key for the served model, its
owner) and the rule that a failed job consumes nothing live here; the HTTP layer only translates.
"""

import logging
import threading
import time
from contextlib import contextmanager

from ..engines.base import DECIDE, REASONS
from ..engines.runtime import release_freed_memory
from ..execution.base import Busy, Executors, ExecutorUnavailable, Job, StaleJob
from ..state.keys import KeyRegistry, KeyTooLarge, NotOwner, UnknownKey, accepted
from ..state.models import StoreUnavailable
from ..state.staged import StagedInputs
from ..wire import Claim, FheInfo

_logger = logging.getLogger(__name__)


class StaleKey(RuntimeError):
    """A key or ciphertext made for another model version (409)."""

    def __init__(self, title: str, description: str) -> None:
        super().__init__(description)
        self.title = title
        self.description = description


class MissingInput(ValueError):
    """A prediction lacks some party's ciphertext, neither sent nor staged (400)."""


class BadCiphertext(ValueError):
    """Ciphertexts that do not parse or do not fit the circuit (400)."""


class BadKeys(ValueError):
    """An upload that is not serialized evaluation keys (400)."""


class NotOffered(ValueError):
    """A function (e.g. reason codes) the served model or this server does not compute (400)."""


class EncryptedScoring:
    """The encrypted protocol's operations on the registry, the staged inputs and the executors."""

    def __init__(
        self,
        keys: KeyRegistry,
        staged: StagedInputs,
        executors: Executors,
        reason_codes: bool = True,
        capacity: int | None = None,
        key_uploads: int = 2,
    ) -> None:
        """`capacity`: encrypted predictions this process admits at once (the executors' running
        and waiting jobs); beyond it `admit` answers Busy before a request's body is read.
        `key_uploads`: key uploads it reads and checks at once (each holds a key of up to tens of
        MB in memory); beyond it `admit_upload` answers Busy."""
        self._keys = keys
        self._staged = staged
        self._executors = executors
        self._reason_codes = reason_codes
        self._admitted = threading.BoundedSemaphore(capacity) if capacity else None
        self._uploads = threading.BoundedSemaphore(key_uploads)

    def admit(self):
        """Hold one of the process's encrypted-prediction slots; Busy (429) if none is free."""
        return _held(self._admitted, "Every encrypted slot of this server is taken: retry shortly.")

    def admit_upload(self):
        """Hold one of the process's key-upload slots; Busy (429) if none is free."""
        return _held(self._uploads, "Other key uploads are being checked here: retry in a few seconds.", 3)

    def offered(self, model) -> list[str]:
        """What parties may ask of the served model here: `decide`, and `reasons` where the
        model computes them and the operator has not turned them off (REASON_CODES=0)."""
        return [f for f in model.functions if f != REASONS or self._reason_codes]

    def info_document(self, model, feature_names: list[str] | None) -> FheInfo:
        """`GET /fhe/info` of the served model: its public description with only the functions
        this server offers (the one place the document is built)."""
        description = model.public_description()
        offered = self.offered(model)
        functions = {f: name for f, name in description.get("functions", {}).items() if f in offered}
        return FheInfo(
            model_version=model.version,
            scheme=model.capabilities.scheme,
            engine=description["engine"],
            parties=model.layout.to_dict(),
            n_features=model.n_features,
            classes=model.classes.tolist(),
            keys_digest=model.keys_digest,
            feature_names=feature_names,
            functions=functions,
            encoding=description.get("encoding"),
            decoding=description.get("decoding"),
            reasons=description.get("reasons") if REASONS in offered else None,
            paillier=description.get("paillier"),
            pbs_count=model.info.get("pbs_count"),
            tree_depth=model.info.get("tree_depth"),
            tree_leaves=model.info.get("tree_leaves"),
        )

    @staticmethod
    def check_upload(model, claimed_version: str | None, claimed_digest: str | None = None) -> None:
        """StaleKey if the keys about to be uploaded claim another model, unless they claim the
        served model's keys digest (made for a version with the same client specs and encoding)."""
        if claimed_version not in (None, model.version) and claimed_digest != model.keys_digest:
            raise StaleKey(
                "Stale key",
                f"These keys were made for model {claimed_version}; the served model "
                f"{model.version} needs new keys (its client specs or encoding differ). Fetch "
                "/fhe/info and /fhe/specs and generate new keys.",
            )

    def register_key(
        self,
        serialized: bytes,
        model,
        claimed_version: str | None,
        owner: str,
        claimed_digest: str | None = None,
    ) -> str:
        """Store evaluation keys for the served `model`; warm them up where they will run."""
        self.check_upload(model, claimed_version, claimed_digest)
        try:
            made_for = Claim(model.version, model.keys_digest)
            key_id = self._keys.add(serialized, made_for, owner, model.screen_keys)
        except KeyTooLarge:
            raise
        except ValueError as error:
            raise BadKeys(str(error)) from None
        finally:
            release_freed_memory()  # the uploaded body is tens of MB
        self._warm_up(key_id)
        return key_id

    def preload(self) -> None:
        """After a fit: every executor starts loading the new model in the background, so that
        the first key uploaded to each does not wait for it (≈ 2–8 s: the model, its server and a
        throwaway key to check uploads against)."""

        def ask() -> None:
            try:
                self._executors.preload()
            except Exception as error:  # noqa: BLE001 - a first job loads the model anyway
                _logger.info("could not ask the executors to preload: %s", error)

        threading.Thread(target=ask, name="preload", daemon=True).start()

    def _warm_up(self, key_id: str) -> None:
        """Have the key's executor check it against the served circuit, deserialize it and run it
        once; a key that does not fit or does not run is deleted, never kept (BadKeys). If the
        executor cannot be reached the key stays: its first job checks it the same way."""
        try:
            self._executors.warm(key_id)
        except (ValueError, UnknownKey) as error:
            self._keys.discard(key_id)
            detail = error.reason if isinstance(error, UnknownKey) else str(error)
            _logger.info("refused key %s at its warm-up: %s", key_id, detail)
            raise BadKeys(
                "These evaluation keys do not fit the served circuit or do not run with it (made "
                "for another model, or damaged): fetch /fhe/info and /fhe/specs and make new keys."
            ) from None
        except (ExecutorUnavailable, StaleJob, StoreUnavailable) as error:
            _logger.warning("could not warm key %s up: %s", key_id, error)

    def check_key(
        self, key_id: str, model, claimed_version: str | None, claimed_digest: str | None = None
    ) -> None:
        """UnknownKey if there is no usable key `key_id`; StaleKey if the served model cannot use
        it or the request's ciphertexts claim a model whose encoding may differ.

        A key uploaded for an earlier version stays usable while the served model has the same
        keys digest (client specs and encoding): a refit that changes neither strands no party.
        """
        key_version, key_digest = self._keys.made_for(key_id)
        if not accepted(key_version, key_digest, model.version, model.keys_digest):
            raise StaleKey(
                "Stale key",
                f"This key was made for model {key_version}; the served model {model.version} "
                "needs new keys (its client specs or encoding differ). Fetch /fhe/info and "
                "/fhe/specs, generate new keys, upload them and encrypt again.",
            )
        claim_fits = claimed_version in (None, "", model.version, key_version)
        if not claim_fits and claimed_digest != model.keys_digest:
            raise StaleKey(
                "Stale ciphertext",
                f"Made for model {claimed_version}; the served model is {model.version}. Fetch "
                "/fhe/info: if its keys_digest is the one you encrypted for, claim the served "
                "version; otherwise encrypt again.",
            )

    def public_key(self, key_id: str, model) -> bytes:
        """The uploaded public key `key_id` (Paillier), for the co-parties to encrypt under.

        UnknownKey if the model's keys are not public (TFHE evaluation keys are not served back)
        or there is no such key; StaleKey if it was made for another model version.
        """
        if not model.capabilities.public_keys:
            raise UnknownKey(
                key_id, "The served scheme's keys are not public: TFHE evaluation keys are not served back."
            )
        self.check_key(key_id, model, None)
        return self._keys.serialized(key_id)

    def check_owner(self, key_id: str, owner: str) -> None:
        """NotOwner unless `owner` uploaded the key (UnknownKey if it vanished meanwhile)."""
        self._keys.check_owner(key_id, owner)

    def stage(self, key_id: str, model, party: str, ciphertext: bytes, uses: int = 1) -> None:
        """Keep `party`'s ciphertext for the next `uses` predictions with key `key_id` (check_key
        first; more than one is the party's consent to the applicant's `explain`)."""
        index = model.layout.index_of(party)
        part = self._verified(key_id, model, {index: ciphertext})[index]
        self._staged.stage(key_id, index, part, uses)

    def _verified(self, key_id: str, model, parts: dict[int, bytes]) -> dict[int, bytes]:
        """The parts (by party index) as computed on, once their proofs hold (Paillier: every bit
        a thermometer code); BadCiphertext naming the party and column otherwise: nothing is kept
        or computed."""
        if not model.capabilities.proves_inputs or not parts:
            return parts
        serialized_key = self._keys.serialized(key_id)  # read once for every part of the request
        names = model.layout.names
        try:
            return {
                index: model.verified_input(serialized_key, key_id, names[index], part)
                for index, part in parts.items()
            }
        except ValueError as error:
            raise BadCiphertext(str(error)) from None

    def check_offered(self, model, function: str) -> None:
        """NotOffered unless the served model computes `function` and this server gives it."""
        if function not in self.offered(model):
            raise NotOffered(
                f"This server does not give {function!r} for the served model (it offers "
                f"{self.offered(model)}; reason codes need a two-class additive model, a batched "
                "explanation a feature the model reads, several rows in one call the TFHE "
                "thermometer engine)."
            )

    def predict(
        self, key_id: str, model, ciphertexts: dict[int, bytes], function: str = DECIDE
    ) -> tuple[bytes, float]:
        """Run the circuit's `function` on the sent ciphertexts plus the staged ones; (result,
        seconds).

        The caller has checked the key (check_key, check_owner). Staged inputs are taken for the
        job and put back if it fails: a failed job consumes nothing.
        """
        self.check_offered(model, function)
        ciphertexts = self._verified(key_id, model, ciphertexts)
        names = model.layout.names
        missing = [i for i in range(len(names)) if i not in ciphertexts]
        decisions = model.decisions_in(function)
        staged = self._staged.take(key_id, missing, decisions)
        inputs = {**ciphertexts, **staged}
        still_missing = [names[i] for i in missing if i not in staged]
        if still_missing:
            self._staged.put_back(key_id, staged, decisions)
            staged_for = (
                f", or staged for at least the {decisions} decisions this call shows,"
                if decisions > 1
                else " or staged"
            )
            raise MissingInput(f"No ciphertext sent{staged_for} for {still_missing}.")
        started = time.perf_counter()
        try:
            ordered = [inputs[i] for i in range(len(names))]
            claim = Claim(model.version, model.keys_digest)
            result = self._executors.run(Job(key_id, claim, ordered, function))
        except ValueError as error:  # ciphertexts that do not fit the circuit
            self._staged.put_back(key_id, staged, decisions)
            raise BadCiphertext(str(error)) from error
        except Exception:
            self._staged.put_back(key_id, staged, decisions)
            raise
        self._staged.consume(key_id, staged)
        return result, time.perf_counter() - started


@contextmanager
def _held(semaphore: threading.BoundedSemaphore | None, busy: str, retry_after: int = 1):
    """Hold `semaphore` for the block; Busy(`busy`) at once if none of its slots is free."""
    if semaphore is None:
        yield
        return
    if not semaphore.acquire(blocking=False):
        raise Busy(busy, retry_after=retry_after)
    try:
        yield
    finally:
        semaphore.release()


__all__ = [
    "EncryptedScoring",
    "StaleKey",
    "MissingInput",
    "BadCiphertext",
    "BadKeys",
    "NotOffered",
    "NotOwner",
]
