"""The FHE engines by name, and loading a published model whichever engine made it.

A new engine is one line in ENGINES (its name and where its `FHEModel` subclass lives — a model
family on a backend —, imported on demand, so an engine's optional dependencies are needed only by
those who choose it) and its name under its encryption in `settings.ENCRYPTIONS`. What an engine can do is
its `capabilities` (engines/backend.py: derived from its family and its backend in one place);
other layers read those, never `hasattr` or `isinstance` on engine classes.
"""

import importlib
import json
from pathlib import Path

from ..settings import ModelSpec
from ..state.vault import Vault
from .base import META_FILE

ENGINES = {
    "thermometer": ("anonymizer.engines.thermometer.model", "ThermometerModel", None),
    "paillier": (
        "anonymizer.engines.paillier.model",
        "PaillierModel",
        "ANONYMIZER_ENCRYPTION=paillier needs phe and gmpy2 (requirements.txt)",
    ),
    "concrete-ml": (
        "anonymizer.engines.concrete_ml.model",
        "ConcreteMLModel",
        "FHE_ENGINE=concrete-ml needs concrete-ml, which `make run`'s venv leaves out: make dev-venv "
        "(or pip install -r requirements-concrete-ml.txt)",
    ),
}


def engine_class(name: str):
    """The model class of engine `name`."""
    if name not in ENGINES:
        raise ValueError(f"Unknown FHE engine {name!r}")
    module, attribute, missing = ENGINES[name]
    try:
        return getattr(importlib.import_module(module), attribute)
    except ImportError as error:
        if missing is None:
            raise
        raise RuntimeError(missing) from error


def load_model(directory: Path, vault: Vault):
    """A published model version; SealError if its files fail authentication."""
    meta = json.loads(vault.read(directory / META_FILE))
    return engine_class(meta.get("engine", "concrete-ml")).from_meta(directory, meta, vault)


def check_settings(engine: str, tree: ModelSpec, selecting: bool) -> None:
    """ValueError for settings the engine cannot serve: a fixed model (`MODEL_SELECTION=off`) of a
    family it does not compute (the check `train` makes, made before anything starts)."""
    if selecting:
        return  # selection offers only what the engine's capabilities allow
    capabilities = engine_class(engine).capabilities
    try:
        capabilities.check(tree, engine)
    except ValueError as error:
        families = {
            "single trees": capabilities.trees,
            "forests and boosted trees": capabilities.ensembles,
            "additive models (MODEL_ADDITIVE=1)": capabilities.additive,
        }
        served = ", ".join(name for name, offered in families.items() if offered)
        raise ValueError(f"{error} With MODEL_SELECTION=off it serves: {served}.") from None
