"""The engine contract: what every FHE model family does, written once.

An engine is a subclass of `FHEModel` that says how it fits (`build`), compiles (`compile`),
lays out circuit arguments (`circuit_arguments`), decodes outputs (`labels`), writes and reads its
deployment (`write_deployment`, `from_stored`) and runs its server (`load_server`, `run_server`).
Everything around that — the training record, FHE simulation and execution, sealed metadata with
pinned artifact digests, one locked and verified server load, warm-up inputs, running on the
parties' ciphertexts — lives here, so both engines take the same verified path. Capability
attributes (`ensembles`, `additive`, `budget`, `specs_file`) replace checks of the engine's name; adding an
engine is a new module plus one line in `registry.py`.
"""

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np

from ..parties import PartyLayout
from ..state.keys import deserialize_evaluation_keys
from ..state.vault import SealError, Vault
from . import keyset
from .deployment import WarmUp, artifact_digests, run_on_ciphertexts, throwaway_warm_up, verified_artifact
from .params import ModelSpec

_logger = logging.getLogger(__name__)

META_FILE = "meta.json.sealed"
# what a party may ask the served circuit for: its decision (always) and reason codes (where the
# model gives them); `FHEModel.functions` maps each to the circuit function that computes it
DECIDE, REASONS = "decide", "reasons"
DEPLOYMENT_DIR = "deployment"
SERVER_FILE = "server.zip"


class FHEModel:
    """A fitted model as its clear function; with `circuit` set it can also run encrypted."""

    engine: str = ""  # the registry name, stored in the sealed metadata
    scheme: str = "tfhe"  # the encryption the parties use: "tfhe" (concrete) or "paillier"
    trees: bool = True  # whether selection may offer trees (a lookup per block)
    ensembles: bool = False  # whether selection may offer forests and boosted trees
    shares_in_clear: bool = False  # whether `class_shares(X)` gives each class's share (ranking measures)
    additive: bool = False  # whether selection may offer additive models (points per bin)
    budget: str = "seconds"  # selection prices by estimated "seconds" or by "pbs" count
    specs_file: str = ""  # the artifact parties load their client from (GET /fhe/specs)
    # where a deployment serves more than its decision (reason codes): the specs of every
    # function, GET /fhe/specs?functions=all (the default specs stay the decision's alone)
    all_functions_specs_file: str = ""
    artifact_pattern: str = "*"  # the deployment artifacts pinned by digest
    public_keys: bool = False  # whether an uploaded key is public (co-parties may fetch it)
    proves_inputs: bool = False  # whether parties' parts carry proofs (checked by verified_input)
    hides_execution_time: bool = False  # whether answers go out without their execution time

    def verified_input(self, serialized_key: bytes, key_id: str, party: str, data: bytes) -> bytes:
        """A party's part as the computation takes it, once what it proves holds (ValueError
        naming the party otherwise); engines without proofs take it as sent."""
        return data

    def __init__(self, layout: PartyLayout, info: dict | None = None, circuit=None) -> None:
        self.layout = layout
        self.info = info or {}
        self.circuit = circuit
        self.deployment_dir: Path | None = None
        self._artifact_digests: dict[str, str] = {}
        self._specs: bytes | None = None
        self._server = None
        self._server_lock = threading.Lock()
        self._warm_up: WarmUp | None = None
        self._keys_digest: str | None = None

    @property
    def n_features(self) -> int:
        """The width of X."""
        return self.layout.n_features

    @property
    def version(self) -> str | None:
        """The store version this model was published as (None before publishing)."""
        return self.info.get("model_version")

    # --- what each engine provides ---------------------------------------------------------
    @classmethod
    def build(cls, X: np.ndarray, y: np.ndarray, layout: PartyLayout, params: ModelSpec):
        """Fit the model (no compilation); `info` may hold its shape (depth, leaves)."""
        raise NotImplementedError

    def compile(self, X: np.ndarray):
        """The concrete circuit, one encrypted argument per party; X's rows are the inputset."""
        raise NotImplementedError

    def compile_served(self, X: np.ndarray):
        """What is deployed: the decision circuit, or a module that also gives reason codes."""
        return self.compile(X)

    def circuit_functions(self) -> dict:
        """The compiled circuit's functions by what the protocol calls them (None: its only one)."""
        return {DECIDE: None}

    @property
    def functions(self) -> dict:
        """The served functions (`decide`, maybe `reasons`) and their circuit function names."""
        return self.info.get("functions") or {DECIDE: None}

    def circuit_arguments(self, X: np.ndarray) -> list[tuple]:
        """Each row of X as the circuit's arguments, one per party in argument order."""
        raise NotImplementedError

    def labels(self, outputs: np.ndarray) -> np.ndarray:
        """Class labels from the circuit's outputs (one per row)."""
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels for X: exactly the served circuit's function, in the clear."""
        raise NotImplementedError

    def output_row(self, result):
        """One row's output from what the circuit returns for it."""
        return result

    def public_description(self) -> dict:
        """What a party needs besides the client specs (merged into GET /fhe/info)."""
        return {"engine": self.engine}

    @classmethod
    def hyperparameters(cls, params: ModelSpec) -> dict:
        """The hyperparameters the training record names."""
        return {
            "max_depth": params.max_depth,
            "min_samples_leaf": params.min_samples_leaf,
            "n_bits": params.n_bits,
        }

    def write_deployment(self, deployment: Path, vault: Vault) -> dict:
        """Write the circuit's artifacts into `deployment`; the engine's own metadata fields."""
        raise NotImplementedError

    @classmethod
    def from_stored(cls, directory: Path, meta: dict, vault: Vault) -> "FHEModel":
        """Rebuild the model from its authenticated metadata (artifacts already verified)."""
        raise NotImplementedError

    def load_server(self, path: Path):
        """Load the verified server artifact at `path`."""
        raise NotImplementedError

    def run_server(self, server, values: list, keys, function: str = DECIDE):
        """Run the loaded server's `function` on deserialized party values under evaluation `keys`."""
        raise NotImplementedError

    def client_specs_object(self):
        """The circuit's `fhe.ClientSpecs` (to make throwaway warm-up ciphertexts)."""
        raise NotImplementedError

    @staticmethod
    def estimated_seconds(circuit) -> float | None:
        """The engine's own price of a compiled candidate; None: selection's latency model."""
        return None

    def key_bytes_bound(self) -> int:
        """The largest key a party can upload for the compiled circuit (its keyset uncompressed)."""
        return keyset.uncompressed_bytes(self.circuit.client.specs.program_info.get_keyset_info())

    @property
    def max_key_bytes(self) -> int | None:
        """What `key_bytes_bound` was when this model was trained (None: trained before it was kept)."""
        return self.info.get("evaluation_key_bytes")

    def parse_keys(self, serialized: bytes):
        """An uploaded key, deserialized; ValueError if it is not one for this model's scheme."""
        return deserialize_evaluation_keys(serialized)

    # --- shared: training, simulation, execution ---------------------------------------------
    @classmethod
    def train(cls, X: np.ndarray, y: np.ndarray, layout: PartyLayout, params: ModelSpec):
        """Build the model and compile its multi-party circuit; `info` is the training record."""
        started = time.perf_counter()
        model = cls.build(X, y, layout, params)
        trained = time.perf_counter()
        model.circuit = model.compile_served(X)
        compiled = time.perf_counter()
        model.info = {
            "engine": cls.engine,
            "parties": layout.to_dict(),
            "n_features": layout.n_features,
            "hyperparameters": cls.hyperparameters(params),
            **model.info,
            "pbs_count": int(model.circuit.programmable_bootstrap_count),
            "complexity": float(model.circuit.complexity),
            "input_bytes": int(model.circuit.size_of_inputs),
            "evaluation_key_bytes": model.key_bytes_bound(),
            "functions": model.circuit_functions(),
            "training_rows": int(X.shape[0]),
            "training_accuracy": float(np.mean(model.predict(X) == y)),
            "train_seconds": round(trained - started, 3),
            "compile_seconds": round(compiled - trained, 3),
        }
        return model

    def _run_rows(self, X: np.ndarray, run) -> np.ndarray:
        outputs = [self.output_row(run(*arguments)) for arguments in self.circuit_arguments(X)]
        return self.labels(np.stack(outputs))

    def simulate(self, X: np.ndarray) -> np.ndarray:
        """Labels from concrete's FHE simulation, row by row."""
        assert self.circuit is not None, "simulation needs the compiled circuit"
        return self._run_rows(X, self.circuit.simulate)

    def execute(self, X: np.ndarray) -> np.ndarray:
        """Labels from real FHE execution (keygen, encrypt each party's part, run, decrypt)."""
        assert self.circuit is not None, "execution needs the compiled circuit"
        self.circuit.keygen()
        return self._run_rows(X, self.circuit.encrypt_run_decrypt)

    # --- shared: publishing and loading ------------------------------------------------------
    def save(self, directory: Path, info: dict, vault: Vault) -> None:
        """Write the deployment artifacts and the sealed metadata that pins their digests."""
        assert self.circuit is not None, "only a compiled model can be deployed"
        directory.mkdir(parents=True)
        self.info = {**self.info, **info}
        deployment = directory / DEPLOYMENT_DIR
        fields = self.write_deployment(deployment, vault)
        self.deployment_dir = deployment
        self._artifact_digests = artifact_digests(deployment, self.artifact_pattern)
        self._specs = verified_artifact(deployment / self.specs_file, self._artifact_digests)
        meta = {
            "engine": self.engine,
            "info": self.info,
            **fields,
            "deployment_sha256": self._artifact_digests,
        }
        vault.write(directory / META_FILE, json.dumps(meta).encode())

    @classmethod
    def from_meta(cls, directory: Path, meta: dict, vault: Vault) -> "FHEModel":
        """A saved model from its authenticated metadata; SealError if an artifact was modified."""
        deployment = directory / DEPLOYMENT_DIR
        if artifact_digests(deployment, cls.artifact_pattern) != meta["deployment_sha256"]:
            raise SealError(f"The deployment artifacts of {directory.name} were modified.")
        model = cls.from_stored(directory, meta, vault)
        model.deployment_dir = deployment
        model._artifact_digests = meta["deployment_sha256"]
        model._specs = verified_artifact(deployment / cls.specs_file, model._artifact_digests)
        return model

    def client_specs(self, every_function: bool = False) -> bytes:
        """What `GET /fhe/specs` serves (read and verified when the model was saved or loaded):
        the decision circuit's specs, or with `every_function` those of every served function."""
        name = self.all_functions_specs_file
        if every_function and name in self._artifact_digests:
            return verified_artifact(self.deployment_dir / name, self._artifact_digests)
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

    # --- shared: the server side -------------------------------------------------------------
    def prepare(self):
        """Load the deployed circuit's server once (SealError if its file was modified)."""
        with self._server_lock:
            if self._server is None:
                path = self.deployment_dir / SERVER_FILE
                verified_artifact(path, self._artifact_digests)
                try:
                    self._server = self.load_server(path)
                except RuntimeError as error:
                    _logger.error("%s does not load: %s", SERVER_FILE, error)
                    raise SealError(f"{SERVER_FILE} does not load.") from error
        return self._server

    def _throwaway(self) -> WarmUp:
        """The throwaway client's inputs and key skeleton (see throwaway_warm_up), made once."""
        if self._warm_up is None:
            # made outside the lock: concrete-ml's specs come from prepare(), which takes it
            specs = self.client_specs_object()
            arguments = self.circuit_arguments(np.zeros((1, self.n_features)))[0]
            warm_up = throwaway_warm_up(specs, list(arguments))  # the decision's specs
            with self._server_lock:
                self._warm_up = self._warm_up or warm_up
        return self._warm_up

    def warm_up_inputs(self) -> list[bytes]:
        """Throwaway ciphertexts of every party's shape, made once."""
        return self._throwaway().inputs

    def checked_keys(self, serialized: bytes):
        """An uploaded key, deserialized once its structure is the served circuit's (the runtime
        trusts a key's own dimensions: another circuit's key would crash the executor);
        ValueError otherwise."""
        try:
            fits = keyset.skeleton(serialized) == self._throwaway().key_skeleton
        except keyset.MalformedKeys:
            fits = False
        if not fits:
            raise ValueError(
                "These evaluation keys are not the served circuit's (another model's, or damaged): "
                "fetch /fhe/info and /fhe/specs and make new keys."
            )
        return self.parse_keys(serialized)

    def warm(self, keys) -> None:
        """Run the circuit once with freshly loaded `keys` on throwaway inputs (result discarded)."""
        self.run_encrypted(self.warm_up_inputs(), keys)

    def run_encrypted(self, ciphertexts: list[bytes], keys, function: str = DECIDE) -> bytes:
        """Run the deployed circuit's `function` on one serialized ciphertext per party
        (argument order).

        Raises ValueError for ciphertexts that do not parse or do not fit their argument, and for
        a function this model does not serve.
        """
        if function not in self.functions:
            raise ValueError(
                f"The served model does not compute {function!r}; it offers {sorted(self.functions)}."
            )
        server = self.prepare()
        return run_on_ciphertexts(
            lambda values: self.run_server(server, values, keys, function), self.layout.names, ciphertexts
        )
