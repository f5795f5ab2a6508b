"""The package's shape: imports form no cycle (lazy ones in functions included), layers depend one
way only, no code outside the registries compares an engine's name, and server, SDK and console
share one wire contract and branch on its error codes, never on titles or message text."""

import ast
from pathlib import Path

import pytest

from devtools.launch import ROOT

PACKAGE = ROOT / "anonymizer"
# what each layer may import besides itself and the shared values (SHARED)
ALLOWED = {
    "http": {"service", "execution", "engines", "state", "config"},
    "service": {"execution", "engines", "state"},
    "execution": {"engines", "state"},
    "engines": {"state"},
    "state": set(),
    "party": {"engines"},
    "config": set(),  # it reads the environment into values: no layer
}
SHARED = {"anonymizer", "parties", "wire", "settings", "tokens"}
ENGINE_NAMES = {"thermometer", "concrete-ml"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of the anonymizer modules `path` imports anywhere but under TYPE_CHECKING."""
    tree, name = ast.parse(path.read_text()), module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = set()
    for child in ast.walk(tree):
        if isinstance(child, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - child.level + 1] if child.level else []
            target = ".".join(base + ([child.module] if child.module else []))
            if child.module is None:  # from . import x
                found.update(f"{target}.{alias.name}" for alias in child.names)
            else:
                found.add(target)
        elif isinstance(child, ast.Import):
            found.update(alias.name for alias in child.names)
    return {f for f in found if f == "anonymizer" or f.startswith("anonymizer.")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for target in imports_of(path):
            while target not in modules and "." in target:  # `from pkg import name`: the package
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def test_shared_values_import_only_the_standard_library():
    edges = graph()
    for shared in SHARED - {"anonymizer"}:
        assert edges[f"anonymizer.{shared}"] <= {"anonymizer.settings"}, shared


def test_module_level_imports_form_no_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in edges[node]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in edges:
        if node not in state:
            visit(node, [node])
    assert cycles == []


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "anonymizer"


@pytest.mark.parametrize("source_layer", sorted(ALLOWED))
def test_layers_depend_one_way(source_layer):
    wrong = []
    for module, targets in graph().items():
        if layer(module) != source_layer:
            continue
        for target in targets:
            if layer(target) not in ALLOWED[source_layer] | {source_layer} | SHARED:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_engine_name_comparisons_outside_the_registries():
    comparisons = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = [n.value for n in [node.left, *node.comparators] if isinstance(n, ast.Constant)]
                if ENGINE_NAMES & set(constants):
                    comparisons.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert comparisons == []


def test_server_sdk_and_console_share_the_wire_contract_which_imports_nothing_of_ours():
    edges = graph()
    assert edges["anonymizer.wire"] == set()
    for user in ("anonymizer.http.app", "anonymizer.party.client", "anonymizer.party.console"):
        assert "anonymizer.wire" in edges[user], user


def test_the_sdk_and_console_never_branch_on_titles_or_message_text():
    found = []
    for path in (PACKAGE / "party").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and node.value == "title":
                found.append(f"{where} reads a title")
            elif isinstance(node, ast.Attribute) and node.attr == "title":
                found.append(f"{where} reads a title")
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "startswith":
                prefixes = [a.value for a in node.args if isinstance(a, ast.Constant)]
                if any(isinstance(p, str) and p.startswith("HTTP") for p in prefixes):
                    found.append(f"{where} matches message text")
    assert found == []


ENGINE_TYPES = {"FHEModel", "ThermometerModel", "PaillierModel", "ConcreteMLModel", "LeafSum", "ScoreSum"}
ENGINE_TYPES |= {"Backend", "ConcreteBackend", "ThermometerConcrete", "ConcreteMLBackend", "PaillierBackend"}
ENGINE_TYPES |= {"ConcreteCircuit", "Compiled"}


def test_no_layer_dispatches_on_engines_by_hasattr_or_isinstance():
    """Engines declare what they can do (`capabilities`, from the family and the backend, in
    engines/backend.py); a layer — or an engine — that asked `hasattr(engine, ...)` or
    `isinstance(x, SomeEngineClass)` would bend with every new engine or backend."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if node.func.id == "hasattr" and path.name != "_compat.py":  # _compat: library internals
                found.append(f"{where} hasattr")
            if node.func.id == "isinstance" and len(node.args) == 2:
                named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                named |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                if named & ENGINE_TYPES:
                    found.append(f"{where} isinstance on {sorted(named & ENGINE_TYPES)}")
    assert found == []


def test_every_engine_is_a_family_on_a_backend_with_capabilities_derived_in_one_place():
    from anonymizer.engines.backend import Backend, Capabilities
    from anonymizer.engines.registry import ENGINES, engine_class
    from anonymizer.settings import ENCRYPTIONS

    for name in ENGINES:
        engine = engine_class(name)
        assert issubclass(engine.backend_type, Backend) and engine.engine == name
        assert engine.capabilities == Capabilities.of(engine, engine.backend_type)
        assert name in ENCRYPTIONS[engine.capabilities.scheme]
    paillier = engine_class("paillier").capabilities
    # every family without a shared secret: trees as path costs, not lookups
    assert paillier.trees and paillier.ensembles and paillier.additive and paillier.public_keys
    assert not paillier.tree_lookups and engine_class("thermometer").capabilities.tree_lookups
