"""The executor side of encrypted scoring: holds deserialized keys and the served circuit, runs jobs.

Both executor implementations (embedded processes, Ray actors) wrap one KeyHolder. Everything it
uses is read from MODEL_DIR, the source of truth: a fresh holder (a restarted executor, another
node) reloads whatever key it is asked for, so losing a holder loses only its in-flight jobs.
"""

from dataclasses import dataclass
from pathlib import Path

from .keystore import KeyStore
from .store import ModelStore, StoreUnavailable
from .vault import ModelKeySource


class StaleJob(RuntimeError):
    """The job was made for a model version that is no longer served."""


@dataclass(frozen=True)
class HolderSettings:
    """What an executor needs to find the store: MODEL_DIR, its model key, and a cache size."""

    model_dir: Path
    model_key: str | None = None
    model_key_file: Path | None = None
    cached_keys: int = 4

    def __repr__(self) -> str:  # never print the model key
        return f"HolderSettings(model_dir={self.model_dir!s}, cached_keys={self.cached_keys})"


class KeyHolder:
    """Deserialized evaluation keys (LRU, `cached_keys` of them) and the circuit they run on."""

    def __init__(self, settings: HolderSettings) -> None:
        key_source = ModelKeySource(settings.model_dir, settings.model_key, settings.model_key_file)
        self._store = ModelStore(settings.model_dir, key_source)
        self._keys = KeyStore(settings.model_dir / "keys", cached_keys=settings.cached_keys)

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
        keys = self._keys.evaluation_keys(key_id)
        model.run_encrypted(model.warm_up_inputs(), keys)

    def run(self, key_id: str, model_version: str, ciphertexts: list[bytes]) -> bytes:
        """Run the served circuit on one ciphertext per party under key `key_id`.

        Raises UnknownKey (evicted, damaged), StaleJob, StoreUnavailable or SealError (stored
        model), ValueError (ciphertexts that do not fit the circuit).
        """
        model = self._serving_model()
        if model.version != model_version:
            raise StaleJob(f"Made for model {model_version}; the served model is {model.version}.")
        keys = self._keys.evaluation_keys(key_id)
        return model.run_encrypted(ciphertexts, keys)

    def _serving_model(self):
        model = self._store.current()
        if model is None:
            raise StoreUnavailable("No model is fitted.")
        return model
