"""The thermometer programs on concrete TFHE: a `LeafSum` or `ScoreSum` circuit and, where served,
the module that adds reason codes (two-class scorecards) and batched explanations on the
decision's own keys (module.py)."""

import numpy as np

from ..concrete_backend import ConcreteBackend, ConcreteCircuit
from .explain import explain_columns
from .leafsum import COMPILE_OPTIONS
from .module import compile_module, extra_functions

INPUTSET_ROWS = 500


class ThermometerConcrete(ConcreteBackend):
    """Compiles a thermometer model's program with concrete-python (the rest is ConcreteBackend's)."""

    def compile_circuit(self, model, X: np.ndarray, served: bool) -> ConcreteCircuit:
        """The decision circuit; served: the module with reasons, explanations and several rows
        where it needs no more keys than the decision alone, else without the rows, else with
        reasons only, else the circuit."""
        bits = model.party_bits(X[:INPUTSET_ROWS])
        circuit = model.program.compile(model.layout.names, bits)
        if not served:
            return ConcreteCircuit(circuit)
        names, inputset = model.layout.names, model.program.inputset(bits)
        explain = explain_columns(model.program, model.encoding, model.layout)
        # fewer functions where concrete would change the keys for one
        attempts = [(explain, True), (explain, False)] + ([([], False)] if explain else [])
        for columns, rows in attempts:
            extra = extra_functions(model.program, names, model.gives_reasons, columns, rows)
            compiled = extra and compile_module(
                model.program, names, inputset, circuit, COMPILE_OPTIONS, extra
            )
            if compiled:
                return ConcreteCircuit(circuit, *compiled)
        return ConcreteCircuit(circuit)
