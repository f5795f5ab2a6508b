"""The executor side of encrypted scoring: the served circuit and deserialized evaluation keys.

Both executor implementations (embedded processes, Ray actors) wrap one JobRunner. Everything it
uses is read from MODEL_DIR, the source of truth: a fresh runner (a restarted executor, another
node) reloads whatever key it is asked for, so losing a runner loses only its in-flight jobs.
"""

from dataclasses import dataclass
from pathlib import Path

from ..engines.registry import load_model
from ..state.key_cache import EvaluationKeyCache
from ..state.keys import KeyRegistry, accepted
from ..state.models import ModelStore, StoreUnavailable
from ..state.vault import ModelKeySource
from .base import Job, StaleJob


@dataclass(frozen=True)
class RunnerSettings:
    """What an executor needs to find the store: MODEL_DIR, its model key, and a cache size."""

    model_dir: Path
    model_key: str | None = None
    model_key_file: Path | None = None
    cached_keys: int = 4

    def __repr__(self) -> str:  # never print the model key
        return f"RunnerSettings(model_dir={self.model_dir!s}, cached_keys={self.cached_keys})"


class JobRunner:
    """Runs jobs on the served circuit with cached deserialized keys (LRU, `cached_keys`)."""

    def __init__(self, settings: RunnerSettings) -> None:
        key_source = ModelKeySource(settings.model_dir, settings.model_key, settings.model_key_file)
        self._store = ModelStore(settings.model_dir, key_source, load_model)
        registry = KeyRegistry(settings.model_dir / "keys")
        self._keys = EvaluationKeyCache(registry, settings.cached_keys)

    def preload(self) -> None:
        """Load the served circuit and its throwaway inputs now, ahead of the first upload."""
        model = self._store.current()
        if model is not None:
            model.prepare()
            model.warm_up_inputs()

    def warm(self, key_id: str) -> None:
        """Make key `key_id`'s first job as fast as later ones: load the circuit, deserialize the
        key and run the circuit once with it on throwaway inputs (the result is discarded)."""
        model = self._serving_model()
        model.warm(self._keys.get(key_id, model.checked_keys))

    def run(self, job: Job) -> bytes:
        """Run the served circuit's function on the job's ciphertexts under its key, if the
        served model accepts what the job was checked against (its claim): a refit that kept the
        keys digest between the check and the run still decides.

        Raises UnknownKey (evicted, damaged), StaleJob, StoreUnavailable or SealError (stored
        model), ValueError (ciphertexts that do not fit the circuit).
        """
        model = self._serving_model()
        claim = job.claim
        if not accepted(claim.model_version, claim.keys_digest, model.version, model.keys_digest):
            raise StaleJob(
                f"Made for model {claim.model_version}; the served model {model.version} needs other keys."
            )
        keys = self._keys.get(job.key_id, model.checked_keys)
        return model.run_encrypted(job.ciphertexts, keys, job.function)

    def _serving_model(self):
        model = self._store.current()
        if model is None:
            raise StoreUnavailable("No model is fitted.")
        return model
