"""The engine contract: a model family's program on a backend, and what every engine does with it.

An engine is a subclass of `FHEModel` that names its `backend_type` (backend.py: what compiles,
prices, stores, parses keys for and runs the program) and says how it fits (`build`), lays out
its parties' arguments (`circuit_arguments`), decodes outputs (`labels`), describes itself to the
parties (`public_description`) and is rebuilt from its metadata (`metadata_fields`,
`from_stored`). Everything around that — the training record, sealed metadata with pinned
artifact digests, the served functions, the keys digest — lives here, so every engine takes the
same verified path. What an engine can do is its `capabilities`, derived from its family and its
backend in one place (`Capabilities.of`); adding an engine is a module plus one line in
`registry.py`.
"""

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from ..parties import PartyLayout
from ..settings import ModelSpec
from ..state.vault import SealError, Vault
from .backend import Backend, Capabilities, Compiled
from .deployment import artifact_digests, verified_artifact

META_FILE = "meta.json.sealed"
# what a party may ask the served model for: its decision (always) and reason codes (where the
# model gives them); `FHEModel.functions` maps each to the backend's function that computes it
DECIDE, REASONS = "decide", "reasons"
DEPLOYMENT_DIR = "deployment"


class FHEModel:
    """A fitted model as its clear function; with `compiled` set (or once published) it can also
    run encrypted on its backend."""

    engine: str = ""  # the registry name, stored in the sealed metadata
    backend_type: type[Backend] = Backend
    # the family: which models `build` makes (the backend may compute fewer: `capabilities`)
    builds_trees: bool = True
    builds_ensembles: bool = False
    builds_additive: bool = False
    builds_path_costs: bool = False  # trees also as linear path costs (for a backend without lookups)
    shares_in_clear: bool = False  # whether `class_shares(X)` gives each class's share
    capabilities: Capabilities  # set for every engine class from its family and its backend

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.capabilities = Capabilities.of(cls, cls.backend_type)

    def __init__(
        self, layout: PartyLayout, info: dict | None = None, compiled: Compiled | None = None
    ) -> None:
        self.layout = layout
        self.info = info or {}
        self.compiled = compiled
        self.backend = self.backend_type()
        self.deployment_dir: Path | None = None
        self.artifact_digests: dict[str, str] = {}
        self._specs: bytes | None = None
        self._keys_digest: str | None = None

    @property
    def n_features(self) -> int:
        """The width of X."""
        return self.layout.n_features

    @property
    def version(self) -> str | None:
        """The store version this model was published as (None before publishing)."""
        return self.info.get("model_version")

    # --- what each family provides -----------------------------------------------------------
    @classmethod
    def build(cls, X: np.ndarray, y: np.ndarray, layout: PartyLayout, params: ModelSpec):
        """Fit the model (no compilation); `info` may hold its shape (depth, leaves)."""
        raise NotImplementedError

    def circuit_arguments(self, X: np.ndarray) -> list[tuple]:
        """Each row of X as the backend's arguments, one per party in argument order."""
        raise NotImplementedError

    def labels(self, outputs: np.ndarray) -> np.ndarray:
        """Class labels from the program's outputs (one per row)."""
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels for X: exactly the served function, in the clear."""
        raise NotImplementedError

    def public_description(self) -> dict:
        """What a party needs besides the client specs (merged into GET /fhe/info)."""
        return {"engine": self.engine, **self.backend.describe(self)}

    @classmethod
    def hyperparameters(cls, params: ModelSpec) -> dict:
        """The hyperparameters the training record names."""
        return {
            "max_depth": params.max_depth,
            "min_samples_leaf": params.min_samples_leaf,
            "n_bits": params.n_bits,
        }

    def metadata_fields(self, directory: Path, vault: Vault) -> dict:
        """What `from_stored` rebuilds the model from (sealed beside the artifacts' digests)."""
        raise NotImplementedError

    @classmethod
    def from_stored(cls, directory: Path, meta: dict, vault: Vault) -> "FHEModel":
        """Rebuild the model from its authenticated metadata (artifacts already verified)."""
        raise NotImplementedError

    # --- shared: compiling and training ------------------------------------------------------
    def compile(self, X: np.ndarray) -> Compiled:
        """The decision compiled by the backend, priced (what selection reads)."""
        return self.backend.compile(self, X, served=False)

    @classmethod
    def train(cls, X: np.ndarray, y: np.ndarray, layout: PartyLayout, params: ModelSpec):
        """Build the model and compile what is served; `info` is the training record."""
        cls.capabilities.check(params, cls.engine)
        started = time.perf_counter()
        model = cls.build(X, y, layout, params)
        trained = time.perf_counter()
        model.compiled = compiled = model.backend.compile(model, X, served=True)
        done = time.perf_counter()
        model.info = {
            "engine": cls.engine,
            "parties": layout.to_dict(),
            "n_features": layout.n_features,
            "hyperparameters": cls.hyperparameters(params),
            **model.info,
            "pbs_count": compiled.lookups,
            "complexity": compiled.complexity,
            "input_bytes": compiled.input_bytes,
            "evaluation_key_bytes": compiled.key_bytes,
            "functions": compiled.functions,
            "training_rows": int(X.shape[0]),
            "training_accuracy": float(np.mean(model.predict(X) == y)),
            "train_seconds": round(trained - started, 3),
            "compile_seconds": round(done - trained, 3),
        }
        return model

    def simulate(self, X: np.ndarray) -> np.ndarray:
        """Labels from the backend's simulation (concrete's FHE simulation; Paillier is exact)."""
        assert self.compiled is not None, "simulation needs the compiled model"
        return self.backend.labels(self, X, real=False)

    def execute(self, X: np.ndarray) -> np.ndarray:
        """Labels from real encryption (keys made here, each party's part encrypted, run, decrypted)."""
        assert self.compiled is not None, "execution needs the compiled model"
        return self.backend.labels(self, X, real=True)

    # --- shared: publishing and loading ------------------------------------------------------
    @property
    def functions(self) -> dict:
        """The served functions (`decide`, maybe `reasons`) and the backend's names for them."""
        return self.info.get("functions") or {DECIDE: None}

    def decisions_in(self, function: str) -> int:
        """How many decisions one call of `function` shows its caller (what the budget counts)."""
        return 1

    def save(self, directory: Path, info: dict, vault: Vault) -> None:
        """Write the deployment artifacts and the sealed metadata that pins their digests."""
        assert self.compiled is not None, "only a compiled model can be deployed"
        directory.mkdir(parents=True)
        self.info = {**self.info, **info}
        deployment = directory / DEPLOYMENT_DIR
        deployment.mkdir()
        self.backend.write(self, deployment)
        fields = self.metadata_fields(directory, vault)
        self._pin(deployment, artifact_digests(deployment, self.backend.artifact_pattern))
        meta = {
            "engine": self.engine,
            "info": self.info,
            **fields,
            "deployment_sha256": self.artifact_digests,
        }
        vault.write(directory / META_FILE, json.dumps(meta).encode())

    def _pin(self, deployment: Path, digests: dict[str, str]) -> None:
        self.deployment_dir = deployment
        self.artifact_digests = digests
        self._specs = verified_artifact(deployment / self.backend.specs_file, digests)

    @classmethod
    def from_meta(cls, directory: Path, meta: dict, vault: Vault) -> "FHEModel":
        """A saved model from its authenticated metadata; SealError if an artifact was modified."""
        deployment = directory / DEPLOYMENT_DIR
        if artifact_digests(deployment, cls.backend_type.artifact_pattern) != meta["deployment_sha256"]:
            raise SealError(f"The deployment artifacts of {directory.name} were modified.")
        model = cls.from_stored(directory, meta, vault)
        model._pin(deployment, meta["deployment_sha256"])
        return model

    def client_specs(self, every_function: bool = False) -> bytes:
        """What `GET /fhe/specs` serves (read and verified when the model was saved or loaded):
        the decision's specs, or with `every_function` those of every served function."""
        name = self.backend.all_functions_specs_file
        if every_function and name in self.artifact_digests:
            return verified_artifact(self.deployment_dir / name, self.artifact_digests)
        return self._specs

    @property
    def keys_digest(self) -> str:
        """What a party's keys and ciphertexts depend on: the specs of every served function and
        the public description (encoding, decoding). Versions with the same digest accept each
        other's keys and ciphertexts, so a refit that changes neither keeps every party's keys."""
        if self._keys_digest is None:
            public = {
                **self.public_description(),
                "parties": self.layout.to_dict(),
                "classes": self.classes.tolist(),
            }
            description = json.dumps(public, sort_keys=True, default=str).encode()
            self._keys_digest = hashlib.sha256(self.client_specs(True) + b"\0" + description).hexdigest()
        return self._keys_digest

    # --- shared: the server side, on the backend ---------------------------------------------
    @property
    def max_key_bytes(self) -> int | None:
        """The largest key a party may upload (None: trained before it was kept)."""
        return self.backend.max_key_bytes(self)

    def prepare(self) -> None:
        """Load what serving needs once (SealError if an artifact was modified or does not load)."""
        self.backend.prepare(self)

    def warm_up_inputs(self) -> list[bytes]:
        """Throwaway parts of every party's shape to run once with new keys, made once."""
        return self.backend.warm_up_inputs(self)

    def parse_keys(self, serialized: bytes):
        """An uploaded key, deserialized; ValueError if it is not one for this model's scheme."""
        return self.backend.parse_keys(self, serialized)

    def screen_keys(self, serialized: bytes) -> None:
        """ValueError for bytes that cannot be a key of this model's scheme (checked at the door)."""
        self.backend.screen_keys(self, serialized)

    def checked_keys(self, serialized: bytes):
        """An uploaded key, deserialized once it fits the served model; ValueError otherwise."""
        return self.backend.checked_keys(self, serialized)

    def warm(self, keys) -> None:
        """Prepare freshly loaded `keys` before the first answer is asked."""
        self.backend.warm(self, keys)

    def verified_input(self, serialized_key: bytes, key_id: str, party: str, data: bytes) -> bytes:
        """A party's part as the computation takes it, once what it proves holds (ValueError
        naming the party otherwise); backends without proofs take it as sent."""
        return self.backend.verified_input(self, serialized_key, key_id, party, data)

    def run_encrypted(self, ciphertexts: list[bytes], keys, function: str = DECIDE) -> bytes:
        """Run the served `function` on one serialized part per party (argument order).

        Raises ValueError for parts that do not parse or do not fit their argument, and for a
        function this model does not serve.
        """
        if function not in self.functions:
            raise ValueError(
                f"The served model does not compute {function!r}; it offers {sorted(self.functions)}."
            )
        return self.backend.run(self, ciphertexts, keys, function)
