"""Every use of concrete-ml internals, in one place behind a version check (concrete-ml 1.9)."""

from importlib.metadata import version

from concrete.ml.common.serialization.loaders import loads
from concrete.ml.common.utils import CiphertextFormat, manage_parameters_for_pbs_errors
from concrete.ml.sklearn.tree_to_numpy import get_equivalent_numpy_forward_from_onnx_tree

TESTED_CONCRETE_ML = ("1.9.",)

__all__ = [
    "loads",
    "manage_parameters_for_pbs_errors",
    "tree_inference",
    "rounding_bits",
    "restore_tree_inference",
    "mark_compiled",
]

_installed = version("concrete-ml")
if not _installed.startswith(TESTED_CONCRETE_ML):
    raise ImportError(
        f"The concrete-ml engine was written for concrete-ml {TESTED_CONCRETE_ML}, found "
        f"{_installed}: check anonymizer/engines/concrete_ml/_compat.py against its sources."
    )


def tree_inference(cml_model):
    """The fitted tree's integer inference function (what the circuit compiles)."""
    return cml_model._tree_inference


def rounding_bits(cml_model) -> tuple[int, int]:
    """The rounding concrete-ml derived from the training inputs.

    It is kept only in the inference closure; concrete-ml's own loader recomputes it from zeros,
    which can give a different circuit, so the engine stores it.
    """
    for cell in tree_inference(cml_model).__closure__ or ():
        if isinstance(cell.cell_contents, tuple) and len(cell.cell_contents) == 2:
            return tuple(int(v) for v in cell.cell_contents)  # type: ignore[return-value]
    raise RuntimeError("concrete-ml's tree inference no longer carries its rounding bits")


def restore_tree_inference(cml_model, bits: tuple[int, int]) -> None:
    """Rebuild a loaded tree's inference with the stored rounding."""
    cml_model._tree_inference, _ = get_equivalent_numpy_forward_from_onnx_tree(
        cml_model.onnx_model_, lsbs_to_remove_for_trees=bits
    )


def mark_compiled(cml_model, circuit) -> None:
    """Attach our own multi-party circuit so concrete-ml's FHEModelDev saves it."""
    cml_model.fhe_circuit_ = circuit
    cml_model._is_compiled = True
    cml_model.ciphertext_format = CiphertextFormat.CONCRETE
