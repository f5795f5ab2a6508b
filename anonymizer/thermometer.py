"""The thermometer engine: a tree, random forest or boosted trees on threshold bits, compiled with
concrete-python.

Roles as in concrete's deployment API: `ThresholdForest.train` is the developer side (fit, cut
into blocks, compile), `save` publishes `server.zip` and the client specs, the party encrypts its
bits with a stock `fhe.Client` on those specs, and `run_encrypted` is the server side.
"""

import json
import threading
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from .config import TreeParams
from .deployment import artifact_digests, run_on_ciphertexts, throwaway_ciphertexts, verified_artifact
from .encoding import ThresholdEncoding
from .leafsum import LeafSum
from .parties import PartyLayout
from .vault import SealError, Vault

ENGINE = "thermometer"
META_FILE = "meta.json.sealed"
DEPLOYMENT_DIR = "deployment"
SERVER_FILE = "server.zip"
SPECS_FILE = "client.specs"
INPUTSET_ROWS = 500


# boosted trees' shrinkage: one value for every dataset (few trees, so not the usual 0.1)
BOOSTING_LEARNING_RATE = 0.5


def fit_estimator(levels: np.ndarray, y: np.ndarray, params: TreeParams):
    """A scikit-learn tree or random forest fitted on encoded levels; returns its list of trees."""
    common = dict(
        max_depth=params.max_depth,
        min_samples_leaf=params.min_samples_leaf,
        random_state=params.random_state,
    )
    if params.n_estimators > 1:
        forest = RandomForestClassifier(n_estimators=params.n_estimators, **common).fit(levels, y)
        return forest.estimators_
    return [DecisionTreeClassifier(**common).fit(levels, y)]


def boosted_leaf_sum(
    levels: np.ndarray, y: np.ndarray, params: TreeParams, encoding, layout: PartyLayout
) -> tuple[LeafSum, list]:
    """Gradient-boosted trees on encoded levels (y in {0, 1}) as a LeafSum, and the trees."""
    if len(np.unique(y)) != 2:
        raise ValueError("Boosted trees are served for two classes only.")
    booster = GradientBoostingClassifier(
        n_estimators=params.n_estimators,
        learning_rate=BOOSTING_LEARNING_RATE,
        max_depth=params.max_depth,
        min_samples_leaf=params.min_samples_leaf,
        random_state=params.random_state,
    ).fit(levels, y)
    trees = list(booster.estimators_[:, 0])
    leaf_values = [BOOSTING_LEARNING_RATE * t.tree_.value[:, 0, 0] for t in trees]
    prior = float(np.mean(y))  # the log-loss booster starts from the prior's log-odds
    initial = float(np.log(prior / (1 - prior)))
    leaf_sum = LeafSum.from_boosted(trees, leaf_values, initial, encoding, layout, params.block_bits)
    return leaf_sum, trees


class ThresholdForest:
    """A fitted model as its clear integer function; with `circuit` set it can also run encrypted."""

    engine = ENGINE

    def __init__(
        self,
        layout: PartyLayout,
        encoding: ThresholdEncoding,
        leaf_sum: LeafSum,
        classes: np.ndarray,
        info: dict | None = None,
        circuit=None,
    ) -> None:
        self.layout = layout
        self.encoding = encoding
        self.leaf_sum = leaf_sum
        self.classes = np.asarray(classes)
        self.info = info or {}
        self.circuit = circuit
        self.deployment_dir: Path | None = None
        self._artifact_digests: dict[str, str] = {}
        self._specs: bytes | None = None
        self._server = None
        self._server_lock = threading.Lock()
        self._warm_up_inputs: list[bytes] | None = None

    @property
    def n_features(self) -> int:
        return self.layout.n_features

    @property
    def version(self) -> str | None:
        return self.info.get("model_version")

    @classmethod
    def build(
        cls, X: np.ndarray, y: np.ndarray, layout: PartyLayout, params: TreeParams
    ) -> "ThresholdForest":
        """Fit the encoding and the trees and cut them into blocks (no compilation)."""
        encoding = ThresholdEncoding.fit(X, params.n_bits)
        classes, counts = np.unique(y, return_counts=True)
        if params.majority:
            sizes = [sum(encoding.n_bits(c) for c in cols) for cols in layout.columns.values()]
            leaf_sum = LeafSum.constant(sizes, len(classes), int(np.argmax(counts)), params.block_bits)
            return cls(layout, encoding, leaf_sum, classes, info={"tree_depth": 0, "tree_leaves": 1})
        levels, targets = encoding.levels(X), np.searchsorted(classes, y)
        if params.boosted:
            leaf_sum, trees = boosted_leaf_sum(levels, targets, params, encoding, layout)
        else:
            trees = fit_estimator(levels, targets, params)
            leaf_sum = LeafSum.from_trees(trees, encoding, layout, len(classes), params.block_bits)
        shape = {
            "tree_depth": max(int(t.get_depth()) for t in trees),
            "tree_leaves": sum(int(t.get_n_leaves()) for t in trees),
        }
        return cls(layout, encoding, leaf_sum, classes, info=shape)

    @classmethod
    def train(
        cls, X: np.ndarray, y: np.ndarray, layout: PartyLayout, params: TreeParams
    ) -> "ThresholdForest":
        """Build the model and compile its multi-party circuit (NotCompilable if it cannot be)."""
        started = time.perf_counter()
        model = cls.build(X, y, layout, params)
        trained = time.perf_counter()
        model.circuit = model.compile(X)
        compiled = time.perf_counter()
        model.info = {
            "engine": ENGINE,
            "parties": layout.to_dict(),
            "n_features": layout.n_features,
            "hyperparameters": {
                "model": params.family,
                "n_estimators": params.n_estimators,
                "max_depth": params.max_depth,
                "min_samples_leaf": params.min_samples_leaf,
                "n_bits": params.n_bits,
                "block_bits": params.block_bits,
            },
            **model.info,
            "pbs_count": int(model.circuit.programmable_bootstrap_count),
            "complexity": float(model.circuit.complexity),
            "input_bytes": int(model.circuit.size_of_inputs),
            "training_rows": int(X.shape[0]),
            "training_accuracy": float(np.mean(model.predict(X) == y)),
            "train_seconds": round(trained - started, 3),
            "compile_seconds": round(compiled - trained, 3),
        }
        return model

    def party_bits(self, X: np.ndarray) -> list[np.ndarray]:
        """What each party encrypts for the rows of X: its threshold bits, in argument order."""
        return [self.encoding.bits(X, columns) for columns in self.layout.columns.values()]

    def compile(self, X: np.ndarray):
        """The concrete circuit; X's first rows (and all-0/all-1 inputs) are the inputset."""
        from concrete.fhe.extensions.tag import tag_context

        # concrete's tag stack is a threading.local set up only in the importing thread;
        # gunicorn's gthread workers compile in other threads
        if not hasattr(tag_context, "stack"):
            tag_context.stack = []
        return self.leaf_sum.compile(self.layout.names, self.party_bits(X[:INPUTSET_ROWS]))

    def outputs(self, X: np.ndarray) -> np.ndarray:
        """The circuit's integer output for each row of X, computed in the clear."""
        return self.leaf_sum.outputs(self.party_bits(X))

    def labels(self, outputs: np.ndarray) -> np.ndarray:
        """Class labels from circuit outputs (most votes or probability; the first class on ties)."""
        return self.classes[np.argmax(self.leaf_sum.shares(outputs), axis=1)]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels for X: exactly the served circuit's function, in the clear."""
        return self.labels(self.outputs(X))

    def _run_rows(self, X: np.ndarray, run) -> np.ndarray:
        bits = self.party_bits(X)
        return self.labels(np.array([run(*(z[i] for z in bits)) for i in range(X.shape[0])]))

    def simulate(self, X: np.ndarray) -> np.ndarray:
        """Labels from concrete's FHE simulation, row by row."""
        return self._run_rows(X, self.circuit.simulate)

    def execute(self, X: np.ndarray) -> np.ndarray:
        """Labels from real FHE execution (keygen, encrypt each party's bits, run, decrypt)."""
        self.circuit.keygen()
        return self._run_rows(X, self.circuit.encrypt_run_decrypt)

    def public_description(self) -> dict:
        """What a party needs besides the client specs: its columns' edges and how to decode."""
        return {
            "engine": ENGINE,
            "encoding": {
                party: {"columns": columns, "edges": [self.encoding.edges[c].tolist() for c in columns]}
                for party, columns in self.layout.columns.items()
            },
            "decoding": self.leaf_sum.decoding,
        }

    def client_specs(self) -> bytes:
        """The circuit's serialized `ClientSpecs` (read and verified when the model was loaded)."""
        return self._specs

    def save(self, directory: Path, info: dict, vault: Vault) -> None:
        """Write the server circuit, the client specs and the sealed model description."""
        directory.mkdir(parents=True)
        self.info = {**self.info, **info}
        deployment = directory / DEPLOYMENT_DIR
        deployment.mkdir()
        self.circuit.server.save(str(deployment / SERVER_FILE))
        self._specs = self.circuit.client.specs.serialize()
        (deployment / SPECS_FILE).write_bytes(self._specs)
        self.deployment_dir = deployment
        self._artifact_digests = artifact_digests(deployment)
        meta = {
            "engine": ENGINE,
            "info": self.info,
            "classes": self.classes.tolist(),
            "label_dtype": self.classes.dtype.str,
            "encoding": self.encoding.to_dict(),
            "leaf_sum": self.leaf_sum.to_dict(),
            "deployment_sha256": self._artifact_digests,
        }
        vault.write(directory / META_FILE, json.dumps(meta).encode())

    @classmethod
    def from_meta(cls, directory: Path, meta: dict) -> "ThresholdForest":
        """Rebuild a saved model from its authenticated description."""
        deployment = directory / DEPLOYMENT_DIR
        if artifact_digests(deployment) != meta["deployment_sha256"]:
            raise SealError(f"The deployment artifacts of {directory.name} were modified.")
        info = meta["info"]
        model = cls(
            PartyLayout(info["parties"]),
            ThresholdEncoding.from_dict(meta["encoding"]),
            LeafSum.from_dict(meta["leaf_sum"]),
            np.asarray(meta["classes"], dtype=np.dtype(meta["label_dtype"])),
            info=info,
        )
        model.deployment_dir = deployment
        model._artifact_digests = meta["deployment_sha256"]
        model._specs = verified_artifact(deployment / SPECS_FILE, model._artifact_digests)
        return model

    def prepare(self):
        """Load the deployed circuit's server once (SealError if its file was modified)."""
        from concrete import fhe

        with self._server_lock:
            if self._server is None:
                path = self.deployment_dir / SERVER_FILE
                verified_artifact(path, self._artifact_digests)
                try:
                    self._server = fhe.Server.load(str(path))
                except RuntimeError as error:
                    raise SealError(f"{SERVER_FILE} does not load: {error}") from error
        return self._server

    def warm_up_inputs(self) -> list[bytes]:
        """Throwaway ciphertexts of every party's shape (see throwaway_ciphertexts), made once."""
        from concrete import fhe

        with self._server_lock:
            if self._warm_up_inputs is None:
                bits = self.party_bits(np.zeros((1, self.n_features)))
                specs = fhe.ClientSpecs.deserialize(self._specs)
                self._warm_up_inputs = throwaway_ciphertexts(specs, [b[0] for b in bits])
        return self._warm_up_inputs

    def run_encrypted(self, ciphertexts: list[bytes], keys) -> bytes:
        """Run the deployed circuit on one serialized ciphertext per party (argument order).

        Raises ValueError for ciphertexts that do not parse or do not fit their argument.
        """
        server = self.prepare()
        return run_on_ciphertexts(
            lambda values: server.run(*values, evaluation_keys=keys),
            self.layout.names,
            ciphertexts,
        )
