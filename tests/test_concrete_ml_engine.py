"""The concrete-ml engine (FHE_ENGINE=concrete-ml): the baseline stays correct."""

import numpy as np
import pytest
from cryptography.fernet import Fernet

from anonymizer.config import TreeParams
from anonymizer.concrete_ml_engine import MultiPartyTree
from anonymizer.parties import PartyLayout
from anonymizer.engines import load_model
from anonymizer.vault import SealError, Vault
from challenge_stub.dataset import PARTY_LAYOUT
from conftest import TWO_PARTY_LAYOUT, random_rows


@pytest.fixture(scope="module", params=["three_parties", "two_parties_non_contiguous"])
def trained(request, credit_data):
    if request.param == "three_parties":
        layout = PartyLayout(PARTY_LAYOUT)
    else:
        layout = PartyLayout(TWO_PARTY_LAYOUT)
    X, y = credit_data["training"]
    return MultiPartyTree.train(X, y, layout, TreeParams())


def test_tree_is_useful_and_described(trained, credit_data):
    X, y = credit_data["tuning"]
    accuracy = np.mean(trained.predict(X) == y)
    majority = max(np.mean(y), 1 - np.mean(y))
    assert accuracy > majority + 0.05
    assert trained.info["pbs_count"] > 0
    assert trained.info["tree_depth"] <= 5
    assert trained.circuit is not None


def test_circuit_has_one_encrypted_argument_per_party(trained):
    graph = trained.circuit.graph
    assert len(graph.input_nodes) == len(trained.layout.names)
    for index, columns in enumerate(trained.layout.columns.values()):
        assert graph.input_nodes[index].output.shape == (1, len(columns))


def test_clear_path_matches_fhe_simulation_on_200_rows(trained):
    X = random_rows(200, seed=11)
    assert np.array_equal(trained.simulate(X), trained.predict(X))


def test_clear_path_matches_real_fhe_execution(trained):
    X = random_rows(3, seed=12)
    assert np.array_equal(trained.execute(X), trained.predict(X))


def test_saved_tree_predicts_like_the_compiled_one(trained, tmp_path):
    vault = Vault(Fernet.generate_key())
    trained.save(tmp_path / "v1", {"model_version": "v1"}, vault)
    loaded = load_model(tmp_path / "v1", vault)
    X = random_rows(2000, seed=13)
    assert np.array_equal(loaded.predict(X), trained.predict(X))
    assert loaded.version == "v1"
    assert loaded.layout.to_dict() == trained.layout.to_dict()
    assert (tmp_path / "v1" / "deployment" / "client.zip").exists()
    assert (tmp_path / "v1" / "deployment" / "server.zip").exists()


def test_tampered_or_foreign_model_files_are_refused_before_parsing(trained, tmp_path):
    vault = Vault(Fernet.generate_key())
    trained.save(tmp_path / "v1", {"model_version": "v1"}, vault)
    with pytest.raises(SealError, match="another key"):
        load_model(tmp_path / "v1", Vault(Fernet.generate_key()))
    sealed = tmp_path / "v1" / "model.json.sealed"
    original = sealed.read_bytes()
    sealed.write_bytes(original[:-5] + bytes([original[-5] ^ 1]) + original[-4:])
    with pytest.raises(SealError, match="model.json.sealed failed authentication"):
        load_model(tmp_path / "v1", vault)
    sealed.write_bytes(original)
    with open(tmp_path / "v1" / "deployment" / "server.zip", "ab") as server_zip:
        server_zip.write(b"x")
    with pytest.raises(SealError, match="deployment artifacts"):
        load_model(tmp_path / "v1", vault)
    assert b"sklearn" not in original and b"DecisionTree" not in original  # encrypted at rest


def test_labels_keep_the_training_label_dtype(credit_data):
    X, y = credit_data["training"]
    tree = MultiPartyTree.train(X, y.astype(bool), PartyLayout(PARTY_LAYOUT), TreeParams(max_depth=3))
    assert tree.predict(X[:5]).dtype == np.bool_


def test_warm_up_inputs_fit_the_circuit_and_run_with_a_party_key(trained, tmp_path):
    """Uploads run a new key once on throwaway inputs of every party's shape (keyholder.warm)."""
    from concrete import fhe

    vault = Vault(Fernet.generate_key())
    trained.save(tmp_path / "v1", {"model_version": "v1"}, vault)
    loaded = load_model(tmp_path / "v1", vault)
    party = fhe.Client(loaded.prepare().server.client_specs)
    party.keys.generate()
    inputs = loaded.warm_up_inputs()
    assert len(inputs) == len(loaded.layout.names) and loaded.warm_up_inputs() is inputs
    assert fhe.Value.deserialize(loaded.run_encrypted(inputs, party.evaluation_keys))
