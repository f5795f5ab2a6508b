"""The execution contract: where encrypted jobs run, the errors a job can end with, and the one
wire code that carries those errors from an executor (a process or a Ray actor) back to the web tier.

Both implementations (`embedded`, `ray_actors`) depend on this module and never on each other.
"""

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from ..state.keys import UnknownKey
from ..state.models import StoreUnavailable
from ..state.vault import SealError
from ..wire import Claim


class Busy(RuntimeError):
    """The executor's queue is full; `retry_after` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExecutorUnavailable(RuntimeError):
    """No executor answered (starting, restarting, or it died mid-job): retry shortly."""


class StaleJob(RuntimeError):
    """The job was made for a model that is no longer served and whose keys its successor does
    not accept (another keys digest)."""


@dataclass(frozen=True)
class Job:
    """One encrypted evaluation: the key it runs under, the served model it was checked against
    (a successor with the same keys digest runs it too), one ciphertext per party in argument
    order, and the circuit function (decide, reasons). Every field is required: a job that forgot
    its claim's digest must not silently demand the very version instead."""

    key_id: str
    claim: Claim
    ciphertexts: list[bytes] = field(repr=False)
    function: str

    def header(self) -> dict:
        """The job's JSON header on an executor's socket (the ciphertexts follow as frames)."""
        return {
            "op": "run",
            "key_id": self.key_id,
            "model_version": self.claim.model_version,
            "keys_digest": self.claim.keys_digest,
            "function": self.function,
        }

    @classmethod
    def from_header(cls, header: dict, ciphertexts: list[bytes]) -> "Job":
        """The job a header and its frames describe (KeyError/TypeError if a field is missing)."""
        digest = header["keys_digest"]
        claim = Claim(str(header["model_version"]), None if digest is None else str(digest))
        return cls(str(header["key_id"]), claim, ciphertexts, str(header["function"]))


class Executors(Protocol):
    """Runs encrypted jobs where their key is held."""

    def warm(self, key_id: str) -> None:
        """Deserialize a freshly uploaded key where its jobs will run."""

    def preload(self) -> None:
        """Have every executor load the served model now (after a fit), so that the first key
        uploaded to each does not wait for it; returns once asked, not once loaded."""

    def run(self, job: Job) -> bytes:
        """The encrypted result of `job`; raises Busy, ExecutorUnavailable, UnknownKey,
        StaleJob, StoreUnavailable, SealError or ValueError."""

    def close(self) -> None:
        """Release what this handle started (never the store)."""


def shard(key_id: str, count: int) -> int:
    """The executor index of `key_id`: stable across processes (unlike Python's `hash`)."""
    return int.from_bytes(hashlib.sha256(key_id.encode()).digest()[:8], "big") % count


# a job's failure travels as a status word; `raise_for_status` maps it back to the same exception
_STATUS_OF = (
    (UnknownKey, "unknown_key"),
    (StaleJob, "stale"),
    (SealError, "unavailable"),
    (StoreUnavailable, "unavailable"),
    (ValueError, "bad_input"),
)
_ERROR_OF = {
    "unknown_key": UnknownKey,
    "stale": StaleJob,
    "unavailable": StoreUnavailable,
    "bad_input": ValueError,
}


def reply_for(error: Exception) -> dict:
    """The reply header of a job that raised `error` ("failed" for anything unexpected)."""
    if isinstance(error, Busy):
        return {"status": "busy", "detail": str(error), "retry_after": error.retry_after}
    status = next((word for kind, word in _STATUS_OF if isinstance(error, kind)), "failed")
    detail = error.reason if isinstance(error, UnknownKey) else str(error)
    return {"status": status, "detail": detail}


def raise_for_status(key_id: str, reply: dict) -> None:
    """Turn an executor's reply back into the exception the job raised (nothing if it succeeded)."""
    status, detail = reply.get("status"), str(reply.get("detail", ""))
    if status == "ok":
        return
    if status == "busy":
        raise Busy(detail, int(reply.get("retry_after", 1)))
    if status == "unknown_key":
        raise UnknownKey(key_id, detail)
    if status in _ERROR_OF:
        raise _ERROR_OF[status](detail)
    raise ExecutorUnavailable(f"The encrypted job failed in the executor: {detail}")
