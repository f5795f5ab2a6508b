"""The FHE engines by name, and loading a published model whichever engine made it."""

import json
from pathlib import Path

from .vault import Vault

META_FILE = "meta.json.sealed"


def engine_class(name: str):
    """The model class of engine `name` (imported on demand: concrete-ml is an optional extra)."""
    if name == "thermometer":
        from .thermometer import ThresholdForest

        return ThresholdForest
    if name == "concrete-ml":
        try:
            from .concrete_ml_engine import MultiPartyTree
        except ImportError as error:
            raise RuntimeError(
                "FHE_ENGINE=concrete-ml needs concrete-ml: pip install -r requirements-concrete-ml.txt"
            ) from error
        return MultiPartyTree
    raise ValueError(f"Unknown FHE engine {name!r}")


def load_model(directory: Path, vault: Vault):
    """A published model version; SealError if its files fail authentication."""
    meta = json.loads(vault.read(directory / META_FILE))
    model_class = engine_class(meta.get("engine", "concrete-ml"))
    if model_class.engine == "concrete-ml":
        return model_class.from_meta(directory, meta, vault)
    return model_class.from_meta(directory, meta)
