"""The served concrete module: the decision and, on the decision's own keys and ciphertexts, reason
codes (reasons.py), batched explanations (explain.py) and several rows of one applicant.

Every function takes the decision's arguments, so a party encrypts once, for a decision, and the
server may run any of them on what it sent; a several-rows function (`rows/<count>`) differs only
in the applicant's (the first) argument, `count` rows of it, the other parties' one row shared by
all. `compile_module` checks that concrete chose the decision circuit's keyset and inputs for
every function and returns None when it did not (the backend then serves fewer functions: a
decision's keys never grow for an extra).
"""

import inspect
import json
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass

import numpy as np

from ...wire import ROW_BATCHES, explain_function, rows_function
from ..base import DECIDE, REASONS
from .explain import MAX_EXPLAIN_LOOKUPS, ExplainColumn, explain_circuit_function
from .reasons import reasons_function

DECISION_FUNCTION = "score"  # the decision's name in the module (stock clients' specs keep it)


@dataclass(frozen=True)
class ModuleFunction:
    """One function the module serves beside the decision."""

    name: str  # its name in the module (and in the parties' specs)
    traced: Callable  # what concrete traces
    applicant_rows: int = 1  # rows of the applicant's argument (1: the decision's own arguments)


def extra_functions(
    program, party_names: list[str], reasons: bool, explain: list[ExplainColumn], rows: bool = True
) -> dict[str, ModuleFunction]:
    """{protocol name: ModuleFunction} of what is served beside the decision."""
    functions = {}
    if reasons:
        functions[REASONS] = ModuleFunction(REASONS, reasons_function(program, party_names))
    for column in explain:
        functions[explain_function(column.feature)] = ModuleFunction(
            column.function_name, explain_circuit_function(program, party_names, column)
        )
    for count in ROW_BATCHES if rows else ():
        if count * program.n_lookups <= MAX_EXPLAIN_LOOKUPS:
            functions[rows_function(count)] = ModuleFunction(
                f"rows_{count}", _same_function(program.circuit_function(party_names)), count
            )
    return functions


def _same_function(decide: Callable) -> Callable:
    """The decision's function under a name of its own (concrete names module functions by
    `__name__`); its arguments broadcast, so an applicant argument of several rows decides each."""

    def rows(**bits_by_party):
        return decide(**bits_by_party)

    rows.__signature__ = inspect.signature(decide)  # type: ignore[attr-defined]
    return rows


def _applicant_repeated(inputset: list[tuple], count: int) -> list[tuple]:
    """The decision's inputset with the applicant's argument repeated `count` times: the lookups
    see exactly the decision's values (so concrete chooses its widths and keys)."""
    return [(np.stack([sample[0]] * count), *sample[1:]) for sample in inputset]


def _program_info(specs) -> dict:
    return json.loads(specs.program_info.serialize())


def compile_module(
    program, party_names: list[str], inputset: list[tuple], decision_circuit, options: dict, extra: dict
) -> tuple[object, dict] | None:
    """(the module, {protocol name: function name}) with the decision and the `extra` functions
    (`extra_functions`), or None unless every function needs exactly `decision_circuit`'s keys
    and takes its ciphertexts."""
    from concrete import fhe

    encrypted = {name: "encrypted" for name in party_names}
    score = program.circuit_function(party_names)
    score.__name__ = DECISION_FUNCTION
    names = {DECIDE: DECISION_FUNCTION}
    rows = {DECISION_FUNCTION: 1}
    members: dict = {"composition": fhe.Wired(set()), DECISION_FUNCTION: fhe.function(encrypted)(score)}
    for protocol_name, function in extra.items():
        function.traced.__name__ = function.name
        members[function.name] = fhe.function(encrypted)(function.traced)
        names[protocol_name] = function.name
        rows[function.name] = function.applicant_rows
    # one error probability per lookup, as the decision circuit's lookups have
    per_lookup = {**options, "p_error": options["global_p_error"] / program.n_lookups, "global_p_error": None}
    inputsets = {
        name: _applicant_repeated(inputset, count) if count > 1 else inputset for name, count in rows.items()
    }
    module = fhe.module()(type("Scorer", (), members)).compile(inputsets, **per_lookup)
    info = _program_info(module.server.client_specs)
    inputs = {c["name"]: [i["typeInfo"] for i in c["inputs"]] for c in info["circuits"]}
    alone = _program_info(decision_circuit.server.client_specs)
    alone_inputs = [i["typeInfo"] for i in alone["circuits"][0]["inputs"]]
    if info["keyset"] != alone["keyset"]:
        return None
    if any(inputs[name] != _with_applicant_rows(alone_inputs, count) for name, count in rows.items()):
        return None
    return module, names


def _with_applicant_rows(inputs: list[dict], count: int) -> list[dict]:
    """The decision's input types with `count` rows in the applicant's (the first) argument."""
    if count == 1:
        return inputs
    applicant = deepcopy(inputs[0])
    for shape in ("abstractShape", "concreteShape"):
        dimensions = applicant["lweCiphertext"][shape]["dimensions"]
        applicant["lweCiphertext"][shape]["dimensions"] = [count, *dimensions]
    return [applicant, *inputs[1:]]
