"""The thermometer programs on concrete TFHE: a `LeafSum` or `ScoreSum` circuit, and for two-class
scorecards the module {score, reasons} on the decision's own keys."""

import numpy as np

from ..concrete_backend import ConcreteBackend, ConcreteCircuit
from .leafsum import COMPILE_OPTIONS
from .reasons import FUNCTION_NAMES, compile_module

INPUTSET_ROWS = 500


class ThermometerConcrete(ConcreteBackend):
    """Compiles a thermometer model's program with concrete-python (the rest is ConcreteBackend's)."""

    def compile_circuit(self, model, X: np.ndarray, served: bool) -> ConcreteCircuit:
        """The decision circuit; served scorecards that give reasons: the module {score, reasons}
        where it needs no more keys than the decision alone (reasons.py)."""
        bits = model.party_bits(X[:INPUTSET_ROWS])
        circuit = model.program.compile(model.layout.names, bits)
        if served and model.gives_reasons:
            inputset = model.program.inputset(bits)
            module = compile_module(model.program, model.layout.names, inputset, circuit, COMPILE_OPTIONS)
            if module is not None:
                return ConcreteCircuit(circuit, module, dict(FUNCTION_NAMES))
        return ConcreteCircuit(circuit)
