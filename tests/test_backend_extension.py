"""docs/architecture.md says a backend is one module plus an engine class and a registry line:
this test follows it. `ClearBackend` below is that module — a stand-in with no cryptography (a
party's "ciphertext" is its bits as bytes), so only the extension point is under test — and the
thermometer family runs on it through selection, training, sealing, loading and the server's
`run_encrypted`, with nothing else in the package changed."""

import numpy as np
import pytest
from cryptography.fernet import Fernet
from helpers import random_rows

from anonymizer.engines import registry
from anonymizer.engines.backend import Backend, Compiled
from anonymizer.engines.thermometer.model import ThermometerModel
from anonymizer.parties import PartyLayout
from anonymizer.service.selection import SelectionPolicy, select_model
from anonymizer.state.vault import Vault
from challenge_stub.dataset import PARTY_LAYOUT

SPECS_FILE = "clear.json"


def parts_of(model, row: np.ndarray) -> list[bytes]:
    """What each party sends for one row on the clear backend: its bits."""
    return [z[0].astype(np.int8).tobytes() for z in model.party_bits(row[None, :])]


class ClearBackend(Backend):
    """Additive programs computed on bits sent in the clear (a test stand-in, no secrecy)."""

    scheme = "clear"
    lookups = False  # like Paillier: selection must then offer additive models only
    specs_file = SPECS_FILE

    def compile(self, model, X, served):
        bits = sum(m.shape[0] for m in model.program.weights)
        return Compiled(
            lookups=0,
            complexity=0.0,
            input_bytes=bits,
            key_bytes=16,
            functions={"decide": None},
            estimated_seconds=0.001,
        )

    def labels(self, model, X, real):
        if not real:
            return model.predict(X)
        outputs = [
            np.frombuffer(self.run(model, parts_of(model, row), None, "decide"), np.int64) for row in X
        ]
        return model.labels(np.stack(outputs))

    def write(self, model, deployment):
        (deployment / SPECS_FILE).write_text('{"scheme": "clear"}')

    def parse_keys(self, model, serialized):
        if serialized != b"k" * 16:
            raise ValueError("not a clear key")
        return serialized

    def checked_keys(self, model, serialized):
        return self.parse_keys(model, serialized)

    def run(self, model, ciphertexts, keys, function):
        bits = [np.frombuffer(c, np.int8).astype(np.int64)[None, :] for c in ciphertexts]
        return model.program.outputs(bits).astype(np.int64).tobytes()


class ClearModel(ThermometerModel):
    """The thermometer family on the clear backend: the two lines an engine needs."""

    engine = "clear"
    backend_type = ClearBackend


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(registry.ENGINES, "clear", (__name__, "ClearModel", None))
    return registry.engine_class("clear")


def test_a_new_backend_is_a_module_an_engine_class_and_a_registry_line(registered, credit_data, tmp_path):
    X, y = credit_data["training"]
    layout = PartyLayout(PARTY_LAYOUT)
    assert registered.capabilities.scheme == "clear" and not registered.capabilities.trees
    policy = SelectionPolicy(regularizations=(0.1,), score_bits=(5,), n_bits=(4,), repeats=1)
    selection = select_model(X, y, layout, policy, registered)
    assert all(c.params.additive or c.params.majority for c in selection.candidates)
    model = registered.train(X, y, layout, selection.chosen)
    assert model.info["engine"] == "clear" and model.info["pbs_count"] == 0

    vault = Vault(Fernet.generate_key())
    model.save(tmp_path / "v1", {"model_version": "v1"}, vault)
    loaded = registry.load_model(tmp_path / "v1", vault)
    assert type(loaded) is ClearModel and loaded.keys_digest == model.keys_digest
    rows = random_rows(20, seed=7)
    keys = loaded.checked_keys(b"k" * 16)
    loaded.warm(keys)
    for row in rows:
        outputs = np.frombuffer(loaded.run_encrypted(parts_of(loaded, row), keys), np.int64)[None, :]
        assert loaded.labels(outputs)[0] == loaded.predict(row[None, :])[0]
    assert np.array_equal(model.execute(rows), model.predict(rows))
    with pytest.raises(ValueError, match="does not compute"):
        loaded.run_encrypted([], keys, "reasons")
