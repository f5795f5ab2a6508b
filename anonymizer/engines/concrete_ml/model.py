"""The concrete-ml engine (FHE_ENGINE=concrete-ml): concrete-ml's decision tree, compiled to an FHE
circuit with one encrypted argument per party. The baseline of `make bench`; it needs
requirements-concrete-ml.txt (torch included), which the runtime image leaves out."""

import inspect
from pathlib import Path

import numpy as np
from concrete import fhe
from concrete.ml.deployment import FHEModelDev, FHEModelServer
from concrete.ml.sklearn import DecisionTreeClassifier

from ...parties import PartyLayout
from ...settings import ModelSpec
from ...state.vault import Vault
from ..base import FHEModel
from ..concrete_backend import ConcreteBackend, ConcreteCircuit
from . import _compat

MODEL_FILE = "model.json.sealed"


def new_tree(params: ModelSpec) -> DecisionTreeClassifier:
    """An unfitted concrete-ml tree with these hyperparameters."""
    return DecisionTreeClassifier(
        max_depth=params.max_depth,
        min_samples_leaf=params.min_samples_leaf,
        n_bits=params.n_bits,
        random_state=params.random_state,
    )


class ConcreteMLBackend(ConcreteBackend):
    """concrete-ml's deployment: its tree inference compiled with one argument per party, served
    by `FHEModelServer`, its client (`client.zip`) loadable by a stock `FHEModelClient`."""

    budget = "pbs"
    specs_file = "client.zip"  # loads in a stock FHEModelClient
    all_functions_specs_file = ""
    artifact_pattern = "*.zip"

    def compile_circuit(self, model, X: np.ndarray, served: bool) -> ConcreteCircuit:
        """The tree with one encrypted argument per party; X's rows are the inputset."""
        reorder = np.argsort(model.layout.argument_columns)
        names = model.layout.names
        tree_inference = _compat.tree_inference(model.cml_model)

        def multi_party_inference(**party_inputs):
            # concatenate the parties' slices in argument order, then restore X's column order
            q_x = np.concatenate(tuple(party_inputs[n] for n in names), axis=1)[:, reorder]
            return tree_inference(q_x)[0]

        # concrete names circuit arguments after the signature: one per party
        multi_party_inference.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
        )
        compiler = fhe.Compiler(multi_party_inference, {name: "encrypted" for name in names})
        p_error, global_p_error = _compat.manage_parameters_for_pbs_errors(None, None)
        circuit = compiler.compile(
            model.circuit_arguments(X),
            p_error=p_error,
            global_p_error=global_p_error,
            single_precision=False,
            compress_input_ciphertexts=True,
            compress_evaluation_keys=True,
        )
        return ConcreteCircuit(circuit)

    def output_row(self, result):
        return result[0]

    def write(self, model, deployment: Path) -> None:
        _compat.mark_compiled(model.cml_model, model.compiled.runnable.decision_circuit)
        FHEModelDev(str(deployment), model.cml_model).save()

    def load_server(self, model, path: Path) -> FHEModelServer:
        return FHEModelServer(str(path.parent))

    def run_server(self, model, server: FHEModelServer, values: list, keys, function: str):
        return server.run(tuple(values), keys)  # one function: the decision

    def client_specs_object(self, model):
        return self.prepare(model).server.client_specs


class ConcreteMLModel(FHEModel):
    """A fitted concrete-ml tree; compiled (`compiled` set) or published it can also run encrypted."""

    engine = "concrete-ml"
    backend_type = ConcreteMLBackend

    def __init__(
        self,
        cml_model: DecisionTreeClassifier,
        layout: PartyLayout,
        rounding_bits: tuple[int, int],
        label_dtype: np.dtype,
        info: dict | None = None,
    ) -> None:
        super().__init__(layout, info)
        self.cml_model = cml_model
        self.rounding_bits = rounding_bits
        self.label_dtype = np.dtype(label_dtype)

    @property
    def classes(self) -> np.ndarray:
        """The class labels, in output order."""
        return self.cml_model.classes_

    @classmethod
    def build(cls, X: np.ndarray, y: np.ndarray, layout: PartyLayout, params: ModelSpec) -> "ConcreteMLModel":
        """Fit the quantized tree on (X, y), without compiling."""
        if params.n_estimators > 1 or params.majority or params.boosted:
            raise ValueError("The concrete-ml engine serves single trees only.")
        cml_model = new_tree(params).fit(X, y)
        sklearn_tree = cml_model.sklearn_model
        if sklearn_tree.get_n_leaves() < 2:
            raise ValueError("A tree without any split does not convert (concrete-ml).")
        shape = {
            "tree_depth": int(sklearn_tree.get_depth()),
            "tree_leaves": int(sklearn_tree.get_n_leaves()),
        }
        return cls(cml_model, layout, _compat.rounding_bits(cml_model), y.dtype, info=shape)

    def circuit_arguments(self, X: np.ndarray) -> list[tuple]:
        parts = self.layout.split(self.cml_model.quantize_input(X))
        return [tuple(part[i : i + 1] for part in parts) for i in range(X.shape[0])]

    def quantized_scores(self, X: np.ndarray) -> np.ndarray:
        """What the circuit outputs for each row of X, computed in the clear on quantized values."""
        return _compat.tree_inference(self.cml_model)(self.cml_model.quantize_input(X))[0]

    def labels(self, quantized_scores: np.ndarray) -> np.ndarray:
        """Class labels (training label dtype) from circuit outputs, as concrete-ml decodes them."""
        proba = self.cml_model.post_processing(self.cml_model.dequantize_output(quantized_scores))
        return self.cml_model.classes_[np.argmax(proba, axis=1)].astype(self.label_dtype)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels for X through the quantized clear path (bit-exact with the circuit's graph)."""
        return self.labels(self.quantized_scores(X))

    def metadata_fields(self, directory: Path, vault: Vault) -> dict:
        vault.write(directory / MODEL_FILE, self.cml_model.dumps().encode())
        return {"rounding_bits": list(self.rounding_bits), "label_dtype": self.label_dtype.str}

    @classmethod
    def from_stored(cls, directory: Path, meta: dict, vault: Vault) -> "ConcreteMLModel":
        # concrete-ml's loader unpickles (skops) the sklearn tree: only after authentication
        cml_model = _compat.loads(vault.read(directory / MODEL_FILE))
        rounding_bits = tuple(meta["rounding_bits"])
        _compat.restore_tree_inference(cml_model, rounding_bits)
        info = meta["info"]
        layout = PartyLayout(info["parties"])
        return cls(cml_model, layout, rounding_bits, np.dtype(meta["label_dtype"]), info=info)
