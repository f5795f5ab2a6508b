"""The backend contract: what compiles, prices, stores, parses keys for and runs a model's program.

A model (engines/base.py) is a *program*: a clear integer function of the parties' encoded
columns (the thermometer's `LeafSum` and `ScoreSum`, concrete-ml's quantized tree) with its
encoding and decoding. A *backend* is the cryptography that computes it: concrete TFHE
(concrete_backend.py), concrete-ml's deployment (concrete_ml/), Paillier (paillier/backend.py).
`Compiled` is what a backend made of a program, read by training and selection without knowing
which backend made it; `Capabilities` is what a model family on a backend may serve, derived in
one place (`Capabilities.of`).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..settings import ModelSpec


@dataclass(frozen=True)
class Compiled:
    """What a backend made of a program: its price, read without running it, and what it runs."""

    lookups: int  # programmable bootstraps of one decision (0 where the backend has none)
    complexity: float  # concrete's cost of one decision (0 where the backend has no such model)
    input_bytes: int  # every party's ciphertexts of one decision
    key_bytes: int  # the largest key a party can upload for it
    functions: dict  # the protocol's names (`decide`, maybe `reasons`) -> the backend's names
    estimated_seconds: float | None = None  # the backend's own price; None: selection's model
    wide_lookups: int = 0  # lookups at a large polynomial size (selection's latency model)
    runnable: object = None  # the backend's own compiled form: only the backend reads it


@dataclass(frozen=True)
class Capabilities:
    """What one engine (a model family on a backend) may serve and how the server treats it."""

    scheme: str  # what the parties encrypt with: "tfhe" (a shared secret key) or "paillier"
    trees: bool  # selection may offer trees
    tree_lookups: bool  # trees run as table lookups (TFHE) rather than as path costs (Paillier)
    ensembles: bool  # selection may offer forests and boosted trees
    additive: bool  # selection may offer additive models (points per bin)
    shares_in_clear: bool  # `class_shares(X)` gives each class's share (selection's ranking)
    public_keys: bool  # an uploaded key is public: co-parties may fetch it (GET /fhe/keys/{id})
    proves_inputs: bool  # parties' parts carry proofs, checked by `verified_input`
    hides_execution_time: bool  # answers go out without their execution time
    budget: str  # selection prices by estimated "seconds" or by "pbs" count
    score_widths: tuple[int, ...] | None  # additive score widths selection offers besides the policy's

    @classmethod
    def of(cls, family, backend: "Backend") -> "Capabilities":
        """The family's models the backend can compute, with the backend's traits: trees need
        table lookups, or path costs where the family can build them."""
        computes_trees = backend.lookups or (backend.path_costs and family.builds_path_costs)
        return cls(
            scheme=backend.scheme,
            trees=family.builds_trees and computes_trees,
            tree_lookups=backend.lookups,
            ensembles=family.builds_ensembles and computes_trees,
            additive=family.builds_additive,
            shares_in_clear=family.shares_in_clear,
            public_keys=backend.public_keys,
            proves_inputs=backend.proves_inputs,
            hides_execution_time=backend.hides_execution_time,
            budget=backend.budget,
            score_widths=backend.score_widths,
        )

    def check(self, params: ModelSpec, engine: str) -> None:
        """ValueError if `engine` cannot serve a model of `params`' family."""
        if params.majority:
            return  # the constant: every engine serves it
        if params.additive:
            allowed = self.additive
        elif params.n_estimators > 1 or params.boosted:
            allowed = self.ensembles
        else:
            allowed = self.trees
        if not allowed:
            raise ValueError(f"The {engine} engine does not serve {params.family} models.")


class Backend:
    """The contract every backend implements for the models it computes (`model` is an
    `FHEModel`: its program, layout and deployment directory)."""

    scheme: str = "tfhe"
    lookups: bool = True  # whether it evaluates table lookups (so trees)
    # whether it computes linear forms with masked answers, so trees as path costs (Paillier)
    path_costs: bool = False
    public_keys: bool = False
    proves_inputs: bool = False
    hides_execution_time: bool = False
    budget: str = "seconds"
    # additive score widths to offer besides the policy's, where the backend's cost does not depend
    # on them (a lookup's cost and key size grow with its input's width: TFHE adds none)
    score_widths: tuple[int, ...] | None = None
    specs_file: str = ""  # the artifact parties load their client from (GET /fhe/specs)
    # where a deployment serves more than its decision (reason codes): the specs of every
    # function, GET /fhe/specs?functions=all (the default specs stay the decision's alone)
    all_functions_specs_file: str = ""
    artifact_pattern: str = "*"  # the deployment artifacts pinned by digest

    def compile(self, model, X: np.ndarray, served: bool) -> Compiled:
        """The program compiled for this backend (`served`: what is deployed, e.g. with reasons)."""
        raise NotImplementedError

    def labels(self, model, X: np.ndarray, real: bool) -> np.ndarray:
        """Labels for X as the backend computes them: simulated, or with `real` keys made here,
        each party's part encrypted, run and decrypted."""
        raise NotImplementedError

    def write(self, model, deployment: Path) -> None:
        """The deployment's artifacts (what parties and the server load) into `deployment`."""
        raise NotImplementedError

    def describe(self, model) -> dict:
        """What the backend adds to `GET /fhe/info`."""
        return {}

    def max_key_bytes(self, model) -> int | None:
        """The largest key a party may upload for the served model (None: not known)."""
        return model.info.get("evaluation_key_bytes")

    def prepare(self, model) -> None:
        """Load what serving needs once (SealError if an artifact does not verify)."""

    def warm_up_inputs(self, model) -> list[bytes]:
        """Throwaway ciphertexts to run once with a party's new keys (none if not needed)."""
        return []

    def parse_keys(self, model, serialized: bytes):
        """An uploaded key, deserialized; ValueError if it is not one of this backend's."""
        raise NotImplementedError

    def screen_keys(self, model, serialized: bytes) -> None:
        """Refuse at the door (ValueError) bytes that cannot be one of this backend's keys, before
        they are stored; the executor checks a stored key in full (`checked_keys`) before its
        first run. By default: parse it."""
        self.parse_keys(model, serialized)

    def checked_keys(self, model, serialized: bytes):
        """An uploaded key, deserialized once it fits the served model; ValueError otherwise."""
        raise NotImplementedError

    def warm(self, model, keys) -> None:
        """Prepare freshly loaded `keys` before the first answer is asked."""

    def verified_input(self, model, serialized_key: bytes, key_id: str, party: str, data: bytes) -> bytes:
        """A party's part as the computation takes it, once what it proves holds."""
        return data

    def run(self, model, ciphertexts: list[bytes], keys, function: str) -> bytes:
        """The served `function` on one serialized part per party (argument order); ValueError for
        parts that do not fit."""
        raise NotImplementedError
