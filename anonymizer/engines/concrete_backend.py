"""The concrete TFHE backend: a program compiled with concrete-python, its server loaded once,
evaluation keys checked against the served keyset, the parties' ciphertexts run.

Roles as in concrete's deployment API: `compile` is the developer side, `write` publishes
`server.zip` and the client specs, a party encrypts with a stock `fhe.Client` on those specs, and
`run` is the server side. What a family compiles is its own (`compile_circuit`: the thermometer's
in thermometer/backend.py, concrete-ml's in concrete_ml/model.py).
"""

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..state.keys import deserialize_evaluation_keys
from ..state.vault import SealError
from . import keyset
from ._compat import ensure_tag_stack
from .backend import Backend, Compiled
from .deployment import WarmUp, run_on_ciphertexts, throwaway_warm_up, verified_artifact

_logger = logging.getLogger(__name__)

SERVER_FILE = "server.zip"
SPECS_FILE = "client.specs"
WARM_UP_FILE = "warm_up.json"
ALL_FUNCTIONS_SPECS_FILE = "module.specs"
NOT_THE_SERVED_KEYS = (
    "These evaluation keys are not the served circuit's (another model's, or damaged): "
    "fetch /fhe/info and /fhe/specs and make new keys."
)
# a lookup at polynomial size >= 4096 (6-bit scores) runs longer than its complexity says
# (selection's latency model prices these apart)
LARGE_POLYNOMIAL = 4096


def large_lookups(circuit) -> int:
    """A compiled circuit's lookups at polynomial size LARGE_POLYNOMIAL or more."""
    per_parameter = circuit.programmable_bootstrap_count_per_parameter
    return sum(n for key, n in per_parameter.items() if key.polynomial_size() >= LARGE_POLYNOMIAL)


@dataclass(frozen=True)
class ConcreteCircuit:
    """What concrete compiled: the decision circuit alone, and where reasons are served the module
    {score, reasons} on the same keys (the decision circuit's specs then stay what stock clients
    load: one function, the same keyset and inputs)."""

    decision_circuit: object  # fhe.Circuit
    module: object | None = None  # fhe.Module, or None
    function_names: dict | None = None  # the module's functions by protocol name

    @property
    def served_decision(self):
        """The decision as served: the module's function, or the circuit."""
        if self.module is None:
            return self.decision_circuit
        return self.module.functions()[self.function_names["decide"]]

    @property
    def served(self):
        """What is deployed and keyed: the module, or the circuit."""
        return self.module if self.module is not None else self.decision_circuit

    @property
    def graphs(self) -> dict:
        """The traced graph of each served function, by protocol name."""
        if self.module is None:
            return {"decide": self.decision_circuit.graph}
        functions = self.module.functions()
        return {name: functions[own].graph for name, own in self.function_names.items()}


def priced(circuit: ConcreteCircuit) -> Compiled:
    """The typed price of what concrete compiled (the decision's own figures)."""
    decision = circuit.decision_circuit
    specs = circuit.served.client.specs
    return Compiled(
        lookups=int(circuit.served_decision.programmable_bootstrap_count),
        complexity=float(decision.complexity),  # a module's adds its functions: not a decision's
        input_bytes=int(decision.size_of_inputs),
        key_bytes=keyset.uncompressed_bytes(specs.program_info.get_keyset_info()),
        functions=dict(circuit.function_names or {"decide": None}),
        wide_lookups=large_lookups(decision),
        runnable=circuit,
    )


class ConcreteBackend(Backend):
    """Programs under concrete TFHE: every party holds the one secret key, the server only
    evaluation keys."""

    specs_file = SPECS_FILE
    all_functions_specs_file = ALL_FUNCTIONS_SPECS_FILE

    def __init__(self) -> None:
        self._server = None
        self._lock = threading.Lock()
        self._warm_up: WarmUp | None = None

    # --- the developer side ------------------------------------------------------------------
    def compile_circuit(self, model, X: np.ndarray, served: bool) -> ConcreteCircuit:
        """What concrete compiles of the model's program; X's rows are the inputset."""
        raise NotImplementedError

    def compile(self, model, X: np.ndarray, served: bool) -> Compiled:
        ensure_tag_stack()
        return priced(self.compile_circuit(model, X, served))

    def labels(self, model, X: np.ndarray, real: bool) -> np.ndarray:
        circuit: ConcreteCircuit = model.compiled.runnable
        if real:
            circuit.served.keygen()
        decision = circuit.served_decision
        run = decision.encrypt_run_decrypt if real else decision.simulate
        outputs = [self.output_row(run(*arguments)) for arguments in model.circuit_arguments(X)]
        return model.labels(np.stack(outputs))

    def output_row(self, result):
        """One row's output from what the circuit returns for it."""
        return result

    def write(self, model, deployment: Path) -> None:
        circuit: ConcreteCircuit = model.compiled.runnable
        circuit.served.server.save(str(deployment / SERVER_FILE))
        (deployment / SPECS_FILE).write_bytes(circuit.decision_circuit.client.specs.serialize())
        if circuit.module is not None:  # stock clients keep the one-function specs
            (deployment / ALL_FUNCTIONS_SPECS_FILE).write_bytes(circuit.module.client.specs.serialize())
        warm_up = self._throwaway_for(model, circuit.decision_circuit.client.specs)
        (deployment / WARM_UP_FILE).write_text(json.dumps(warm_up.as_document()))

    # --- the server side ---------------------------------------------------------------------
    def load_server(self, model, path: Path):
        """The verified server artifact at `path`, loaded."""
        from concrete import fhe

        return fhe.Server.load(str(path))

    def run_server(self, model, server, values: list, keys, function: str):
        """The loaded server's `function` on deserialized values under evaluation `keys`."""
        return server.run(*values, evaluation_keys=keys, function_name=model.functions[function])

    def client_specs_object(self, model):
        """The decision's `fhe.ClientSpecs` (to make throwaway warm-up ciphertexts)."""
        from concrete import fhe

        return fhe.ClientSpecs.deserialize(model.client_specs())

    def prepare(self, model):
        """Load the deployed server once (SealError if its file was modified or does not load)."""
        with self._lock:
            if self._server is None:
                path = model.deployment_dir / SERVER_FILE
                verified_artifact(path, model.artifact_digests)
                try:
                    self._server = self.load_server(model, path)
                except RuntimeError as error:
                    _logger.error("%s does not load: %s", SERVER_FILE, error)
                    raise SealError(f"{SERVER_FILE} does not load.") from error
        return self._server

    def _throwaway(self, model) -> WarmUp:
        """The throwaway client's inputs and key skeleton (see throwaway_warm_up): as written at
        the fit, else (models written before, concrete-ml's) made here once."""
        if self._known_warm_up(model) is None:
            # made outside the lock: concrete-ml's specs come from prepare(), which takes it
            warm_up = self._throwaway_for(model, self.client_specs_object(model))
            with self._lock:
                self._warm_up = self._warm_up or warm_up
        return self._warm_up

    def _known_warm_up(self, model) -> WarmUp | None:
        """The warm-up already made here or sealed at the fit (read once), else None."""
        if self._warm_up is None:
            stored = self._stored_warm_up(model)
            with self._lock:
                self._warm_up = self._warm_up or stored
        return self._warm_up

    @staticmethod
    def _throwaway_for(model, specs) -> WarmUp:
        """Made at the fit so that no executor pays a keygen (≈ 1.5 s) to load a new model, while
        the first applicants after the fit upload their keys."""
        arguments = model.circuit_arguments(np.zeros((1, model.n_features)))[0]
        return throwaway_warm_up(specs, list(arguments))  # the decision's specs

    @staticmethod
    def _stored_warm_up(model) -> WarmUp | None:
        """The sealed warm-up written at the fit, if there is one (SealError if it was modified)."""
        if WARM_UP_FILE not in model.artifact_digests:
            return None
        data = verified_artifact(model.deployment_dir / WARM_UP_FILE, model.artifact_digests)
        try:
            return WarmUp.from_document(json.loads(data))
        except ValueError as error:
            raise SealError(f"{WARM_UP_FILE} does not parse ({error}).") from None

    def warm_up_inputs(self, model) -> list[bytes]:
        return self._throwaway(model).inputs

    def parse_keys(self, model, serialized: bytes):
        """Evaluation keys as concrete reads them; ValueError if they do not parse."""
        return deserialize_evaluation_keys(serialized)

    def screen_keys(self, model, serialized: bytes) -> None:
        """The key's structure, read without concrete, equal to the served keyset's where the fit
        sealed it (the executor checks again before the first run): deserializing here cost the
        HTTP worker concrete's import (≈ 2 s, torch's) on its first upload and 0.1–0.3 s each."""
        if not serialized:
            raise ValueError("The evaluation key body is empty.")
        try:
            shape = keyset.skeleton(serialized)
        except keyset.MalformedKeys:
            raise ValueError("Not serialized concrete evaluation keys.") from None
        known = self._known_warm_up(model)  # never made here: that would load concrete
        if known is not None and shape != known.key_skeleton:
            raise ValueError(NOT_THE_SERVED_KEYS)

    def checked_keys(self, model, serialized: bytes):
        """Keys deserialized once their structure is the served circuit's (the runtime trusts a
        key's own dimensions: another circuit's key would crash the executor)."""
        try:
            fits = keyset.skeleton(serialized) == self._throwaway(model).key_skeleton
        except keyset.MalformedKeys:
            fits = False
        if not fits:
            raise ValueError(NOT_THE_SERVED_KEYS)
        return self.parse_keys(model, serialized)

    def warm(self, model, keys) -> None:
        """Run once with freshly loaded `keys` on throwaway inputs (concrete prepares keys on
        their first run; the result is discarded)."""
        self.run(model, self.warm_up_inputs(model), keys, "decide")

    def run(self, model, ciphertexts: list[bytes], keys, function: str) -> bytes:
        server = self.prepare(model)
        return run_on_ciphertexts(
            lambda values: self.run_server(model, server, values, keys, function),
            model.layout.names,
            ciphertexts,
        )
