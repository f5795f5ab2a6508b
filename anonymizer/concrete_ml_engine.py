"""The concrete-ml engine (FHE_ENGINE=concrete-ml): concrete-ml's decision tree, compiled to an FHE
circuit with one encrypted argument per party. The baseline of `make bench`; it needs
requirements-concrete-ml.txt (torch included), which the runtime image leaves out."""

import inspect
import json
import time
from pathlib import Path

import numpy as np
from concrete import fhe
from concrete.fhe.extensions.tag import tag_context
from concrete.ml.common.serialization.loaders import loads
from concrete.ml.common.utils import CiphertextFormat, manage_parameters_for_pbs_errors
from concrete.ml.deployment import FHEModelDev, FHEModelServer
from concrete.ml.sklearn import DecisionTreeClassifier
from concrete.ml.sklearn.tree_to_numpy import get_equivalent_numpy_forward_from_onnx_tree

from .config import TreeParams
from .deployment import artifact_digests, run_on_ciphertexts, throwaway_ciphertexts
from .parties import PartyLayout
from .vault import SealError, Vault

ENGINE = "concrete-ml"
MODEL_FILE = "model.json.sealed"
META_FILE = "meta.json.sealed"
DEPLOYMENT_DIR = "deployment"


def new_tree(params: TreeParams) -> DecisionTreeClassifier:
    """An unfitted concrete-ml tree with these hyperparameters."""
    return DecisionTreeClassifier(
        max_depth=params.max_depth,
        min_samples_leaf=params.min_samples_leaf,
        n_bits=params.n_bits,
        random_state=params.random_state,
    )


def rounding_bits(tree_inference) -> tuple[int, int]:
    # concrete-ml derives the rounding from the training inputs and keeps it only in this closure;
    # its own loader recomputes it from zeros, which can give a different circuit, so we store it.
    for cell in tree_inference.__closure__ or ():
        if isinstance(cell.cell_contents, tuple) and len(cell.cell_contents) == 2:
            return tuple(int(v) for v in cell.cell_contents)  # type: ignore[return-value]
    raise RuntimeError("concrete-ml's tree inference no longer carries its rounding bits")


class MultiPartyTree:
    """A fitted concrete-ml tree; with `circuit` set it can also run encrypted."""

    engine = ENGINE

    def __init__(
        self,
        cml_model: DecisionTreeClassifier,
        layout: PartyLayout,
        rounding_bits: tuple[int, int],
        label_dtype: np.dtype,
        circuit: fhe.Circuit | None = None,
        info: dict | None = None,
    ) -> None:
        self.cml_model = cml_model
        self.layout = layout
        self.rounding_bits = rounding_bits
        self.label_dtype = np.dtype(label_dtype)
        self.circuit = circuit
        self.info = info or {}
        self.deployment_dir: Path | None = None
        self._fhe_server: FHEModelServer | None = None
        self._warm_up_inputs: list[bytes] | None = None

    @property
    def n_features(self) -> int:
        return self.layout.n_features

    @property
    def version(self) -> str | None:
        return self.info.get("model_version")

    @property
    def classes(self) -> np.ndarray:
        return self.cml_model.classes_

    @classmethod
    def build(
        cls, X: np.ndarray, y: np.ndarray, layout: PartyLayout, params: TreeParams
    ) -> "MultiPartyTree":
        """Fit the quantized tree on (X, y), without compiling."""
        if params.n_estimators > 1 or params.majority or params.boosted:
            raise ValueError("The concrete-ml engine serves single trees only.")
        cml_model = new_tree(params).fit(X, y)
        if cml_model.sklearn_model.get_n_leaves() < 2:
            raise ValueError("A tree without any split does not convert (concrete-ml).")
        return cls(cml_model, layout, rounding_bits(cml_model._tree_inference), y.dtype)

    @classmethod
    def train(
        cls, X: np.ndarray, y: np.ndarray, layout: PartyLayout, params: TreeParams
    ) -> "MultiPartyTree":
        """Fit the quantized tree on (X, y) and compile its multi-party circuit."""
        started = time.perf_counter()
        tree = cls.build(X, y, layout, params)
        cml_model = tree.cml_model
        trained = time.perf_counter()
        tree.circuit = tree.compile(X)
        compiled = time.perf_counter()
        sklearn_tree = cml_model.sklearn_model
        tree.info = {
            "engine": ENGINE,
            "parties": layout.to_dict(),
            "n_features": layout.n_features,
            "hyperparameters": {
                "max_depth": params.max_depth,
                "min_samples_leaf": params.min_samples_leaf,
                "n_bits": params.n_bits,
            },
            "tree_depth": int(sklearn_tree.get_depth()),
            "tree_leaves": int(sklearn_tree.get_n_leaves()),
            "pbs_count": int(tree.circuit.programmable_bootstrap_count),
            "complexity": float(tree.circuit.complexity),
            "input_bytes": int(tree.circuit.size_of_inputs),
            "training_rows": int(X.shape[0]),
            "training_accuracy": float(np.mean(tree.predict(X) == y)),
            "train_seconds": round(trained - started, 3),
            "compile_seconds": round(compiled - trained, 3),
        }
        return tree

    def compile(self, X: np.ndarray) -> fhe.Circuit:
        """Compile the tree with one encrypted argument per party; X's rows are the inputset."""
        reorder = np.argsort(self.layout.argument_columns)
        names = self.layout.names
        tree_inference = self.cml_model._tree_inference

        def multi_party_inference(**party_inputs):
            # concatenate the parties' slices in argument order, then restore X's column order
            q_x = np.concatenate(tuple(party_inputs[n] for n in names), axis=1)[:, reorder]
            return tree_inference(q_x)[0]

        # concrete names circuit arguments after the signature: one per party
        multi_party_inference.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
        )
        compiler = fhe.Compiler(multi_party_inference, {name: "encrypted" for name in names})
        # concrete's tag stack is a threading.local set up only in the importing thread;
        # gunicorn's gthread workers compile in other threads
        if not hasattr(tag_context, "stack"):
            tag_context.stack = []
        parts = self.layout.split(self.cml_model.quantize_input(X))
        inputset = [tuple(part[i : i + 1] for part in parts) for i in range(X.shape[0])]
        p_error, global_p_error = manage_parameters_for_pbs_errors(None, None)
        return compiler.compile(
            inputset,
            p_error=p_error,
            global_p_error=global_p_error,
            single_precision=False,
            compress_input_ciphertexts=True,
            compress_evaluation_keys=True,
        )

    def quantized_scores(self, X: np.ndarray) -> np.ndarray:
        """What the circuit outputs for each row of X, computed in the clear on quantized values."""
        return self.cml_model._tree_inference(self.cml_model.quantize_input(X))[0]

    def labels(self, quantized_scores: np.ndarray) -> np.ndarray:
        """Class labels (training label dtype) from circuit outputs, as concrete-ml decodes them."""
        proba = self.cml_model.post_processing(self.cml_model.dequantize_output(quantized_scores))
        return self.cml_model.classes_[np.argmax(proba, axis=1)].astype(self.label_dtype)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels for X through the quantized clear path (bit-exact with the circuit's graph)."""
        return self.labels(self.quantized_scores(X))

    def _run_rows(self, X: np.ndarray, run) -> np.ndarray:
        parts = self.layout.split(self.cml_model.quantize_input(X))
        rows = [run(*(part[i : i + 1] for part in parts))[0] for i in range(X.shape[0])]
        return self.labels(np.stack(rows))

    def simulate(self, X: np.ndarray) -> np.ndarray:
        """Labels from concrete's FHE simulation of the multi-party circuit, row by row."""
        assert self.circuit is not None, "simulation needs the compiled circuit"
        return self._run_rows(X, self.circuit.simulate)

    def execute(self, X: np.ndarray) -> np.ndarray:
        """Labels from real FHE execution (keygen, encrypt each party's slice, run, decrypt)."""
        assert self.circuit is not None, "execution needs the compiled circuit"
        self.circuit.keygen()
        return self._run_rows(X, self.circuit.encrypt_run_decrypt)

    def save(self, directory: Path, info: dict, vault: Vault) -> None:
        """Write the sealed model and metadata plus concrete-ml deployment artifacts."""
        assert self.circuit is not None, "only a compiled tree can be deployed"
        directory.mkdir(parents=True)
        self.info = {**self.info, **info}
        self.cml_model.fhe_circuit_ = self.circuit
        self.cml_model._is_compiled = True
        self.cml_model.ciphertext_format = CiphertextFormat.CONCRETE
        deployment = directory / DEPLOYMENT_DIR
        FHEModelDev(str(deployment), self.cml_model).save()
        self.deployment_dir = deployment
        vault.write(directory / MODEL_FILE, self.cml_model.dumps().encode())
        meta = {
            "engine": ENGINE,
            "info": self.info,
            "rounding_bits": list(self.rounding_bits),
            "label_dtype": self.label_dtype.str,
            "deployment_sha256": artifact_digests(deployment, "*.zip"),
        }
        vault.write(directory / META_FILE, json.dumps(meta).encode())

    def client_specs(self) -> bytes:
        """concrete-ml's client.zip (loads in a stock FHEModelClient)."""
        return (self.deployment_dir / "client.zip").read_bytes()

    def public_description(self) -> dict:
        return {"engine": ENGINE}

    @classmethod
    def from_meta(cls, directory: Path, meta: dict, vault: Vault) -> "MultiPartyTree":
        """Load a saved tree for clear-path serving; SealError if any file fails authentication."""
        deployment = directory / DEPLOYMENT_DIR
        if artifact_digests(deployment, "*.zip") != meta["deployment_sha256"]:
            raise SealError(f"The deployment artifacts of {directory.name} were modified.")
        # concrete-ml's loader unpickles (skops) the sklearn tree: only after authentication
        cml_model = loads(vault.read(directory / MODEL_FILE))
        rounding_bits = tuple(meta["rounding_bits"])
        cml_model._tree_inference, _ = get_equivalent_numpy_forward_from_onnx_tree(
            cml_model.onnx_model_, lsbs_to_remove_for_trees=rounding_bits
        )
        info = meta["info"]
        layout = PartyLayout(info["parties"])
        tree = cls(cml_model, layout, rounding_bits, np.dtype(meta["label_dtype"]), info=info)
        tree.deployment_dir = deployment
        return tree

    def prepare(self) -> FHEModelServer:
        """Load the deployed circuit's server once."""
        if self._fhe_server is None:
            self._fhe_server = FHEModelServer(str(self.deployment_dir))
        return self._fhe_server

    def warm_up_inputs(self) -> list[bytes]:
        """Throwaway ciphertexts of every party's shape (see throwaway_ciphertexts), made once."""
        if self._warm_up_inputs is None:
            parts = self.layout.split(self.cml_model.quantize_input(np.zeros((1, self.n_features))))
            self._warm_up_inputs = throwaway_ciphertexts(self.prepare().server.client_specs, parts)
        return self._warm_up_inputs

    def run_encrypted(self, ciphertexts: list[bytes], keys: fhe.EvaluationKeys) -> bytes:
        """Run the deployed circuit on one serialized ciphertext per party (argument order).

        Raises ValueError for ciphertexts that do not parse or do not fit their argument.
        """
        server = self.prepare()
        return run_on_ciphertexts(
            lambda values: server.run(tuple(values), keys), self.layout.names, ciphertexts
        )
