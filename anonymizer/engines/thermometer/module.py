"""The served concrete module: the decision and, on the decision's own keys and ciphertexts, reason
codes (reasons.py) and batched explanations (explain.py).

Every function takes exactly the decision's arguments, so a party encrypts once, for a decision,
and the server may run any of them on what it sent. `compile_module` checks that concrete chose
the decision circuit's keyset and inputs for every function and returns None when it did not
(the backend then serves fewer functions: a decision's keys never grow for an extra).
"""

import json

from ...wire import explain_function
from ..base import DECIDE, REASONS
from .explain import ExplainColumn, explain_circuit_function
from .reasons import reasons_function

DECISION_FUNCTION = "score"  # the decision's name in the module (stock clients' specs keep it)


def extra_functions(program, party_names: list[str], reasons: bool, explain: list[ExplainColumn]) -> dict:
    """{protocol name: (module function name, traced function)} of what is served beside the
    decision."""
    functions = {}
    if reasons:
        functions[REASONS] = (REASONS, reasons_function(program, party_names))
    for column in explain:
        functions[explain_function(column.feature)] = (
            column.function_name,
            explain_circuit_function(program, party_names, column),
        )
    return functions


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
    members: dict = {"composition": fhe.Wired(set()), DECISION_FUNCTION: fhe.function(encrypted)(score)}
    for protocol_name, (name, function) in extra.items():
        function.__name__ = name
        members[name] = fhe.function(encrypted)(function)
        names[protocol_name] = name
    # one error probability per lookup, as the decision circuit's lookups have
    per_lookup = {**options, "p_error": options["global_p_error"] / program.n_lookups, "global_p_error": None}
    module = fhe.module()(type("Scorer", (), members)).compile(
        {name: inputset for name in names.values()}, **per_lookup
    )
    info = _program_info(module.server.client_specs)
    inputs = {c["name"]: [i["typeInfo"] for i in c["inputs"]] for c in info["circuits"]}
    alone = _program_info(decision_circuit.server.client_specs)
    alone_inputs = [i["typeInfo"] for i in alone["circuits"][0]["inputs"]]
    if info["keyset"] != alone["keyset"] or any(inputs[name] != alone_inputs for name in names.values()):
        return None
    return module, names
