"""The concrete-ml engine's own behaviour (FHE_ENGINE=concrete-ml, the baseline); the shared
contract is in test_engine_contract.py."""

import numpy as np
import pytest
from cryptography.fernet import Fernet
from engine_cases import cases_of
from engine_cases import trained as trained_case

from anonymizer.engines.concrete_ml.model import ConcreteMLModel
from anonymizer.engines.registry import load_model
from anonymizer.parties import PartyLayout
from anonymizer.settings import ModelSpec
from anonymizer.state.vault import SealError, Vault
from challenge_stub.dataset import PARTY_LAYOUT


@pytest.fixture(scope="module", params=cases_of("concrete-ml"))
def trained(request):
    return trained_case(request.param)


def test_tree_is_shallow_and_its_arguments_are_quantized_slices(trained):
    assert trained.info["tree_depth"] <= 5
    for index, columns in enumerate(trained.layout.columns.values()):
        assert trained.compiled.runnable.decision_circuit.graph.input_nodes[index].output.shape == (
            1,
            len(columns),
        )


def test_tampered_sealed_model_is_refused_before_parsing(trained, tmp_path):
    vault = Vault(Fernet.generate_key())
    trained.save(tmp_path / "v1", {"model_version": "v1"}, vault)
    sealed = tmp_path / "v1" / "model.json.sealed"
    original = sealed.read_bytes()
    sealed.write_bytes(original[:-5] + bytes([original[-5] ^ 1]) + original[-4:])
    with pytest.raises(SealError, match="model.json.sealed failed authentication"):
        load_model(tmp_path / "v1", vault)
    assert b"sklearn" not in original and b"DecisionTree" not in original  # encrypted at rest


def test_labels_keep_the_training_label_dtype(credit_data):
    X, y = credit_data["training"]
    tree = ConcreteMLModel.train(X, y.astype(bool), PartyLayout(PARTY_LAYOUT), ModelSpec(max_depth=3))
    assert tree.predict(X[:5]).dtype == np.bool_
