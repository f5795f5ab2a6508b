"""The engine contract (anonymizer/engines/base.py), checked the same way for every engine: one
encrypted argument per party, the clear function equal to FHE simulation and to real execution,
sealed saves that reload exactly and refuse tampering, warm-up inputs that run under a party's key."""

import networkx as nx
import numpy as np
import pytest
from concrete import fhe
from cryptography.fernet import Fernet
from engine_cases import CASES, credit_split, labels_for, trained
from helpers import random_rows
from test_key_checks import other_circuits_keys

from anonymizer.engines.registry import load_model
from anonymizer.state.vault import SealError, Vault


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return request.param


@pytest.fixture(scope="module")
def model(case):
    return trained(case)


@pytest.fixture
def saved(model, tmp_path):
    vault = Vault(Fernet.generate_key())
    model.save(tmp_path / "v1", {"model_version": "v1"}, vault)
    return tmp_path / "v1", vault


def test_model_is_useful_and_described(model, case):
    X, y = credit_split()["tuning"]
    y = labels_for(case, X, y)
    majority = np.max(np.bincount(y)) / len(y)
    assert np.mean(model.predict(X) == y) > majority + 0.05
    assert model.info["pbs_count"] > 0 and model.info["engine"] == model.engine
    assert model.info["tree_depth"] <= 5 and model.compiled is not None


def test_circuit_has_one_encrypted_argument_per_party_of_its_shape(model):
    graph = model.compiled.runnable.decision_circuit.graph
    arguments = model.circuit_arguments(random_rows(1, seed=10))[0]
    assert len(graph.input_nodes) == len(model.layout.names) == len(arguments)
    for index, argument in enumerate(arguments):
        assert graph.input_nodes[index].output.shape == np.shape(argument)


def outputs_reachable_without_a_lookup(graph) -> list:
    """The outputs of a circuit's `graph` that some input reaches by a path with no table lookup."""
    leveled = graph.graph.copy()
    leveled.remove_nodes_from([node for node in graph.graph.nodes if node.converted_to_table_lookup])
    return [
        output
        for output in graph.output_nodes.values()
        if output in leveled
        and any(
            source in leveled and nx.has_path(leveled, source, output)
            for source in graph.input_nodes.values()
        )
    ]


def test_no_output_is_reachable_from_an_input_without_a_table_lookup(model):
    # a leveled-only output is a known linear function of the key holder's input masks: one
    # answer would give the model's weights away (docs/privacy.md)
    # every function served: the decision, and reason codes where the model gives them
    for graph in model.compiled.runnable.graphs.values():
        assert outputs_reachable_without_a_lookup(graph) == []


def test_the_lookup_check_flags_a_leveled_only_circuit():
    weights = np.array([[3], [-2], [5]])
    compiler = fhe.Compiler(lambda x: x @ weights + 4, {"x": "encrypted"})
    leveled = compiler.compile([np.array(bits) for bits in ([0, 0, 0], [1, 1, 1], [1, 0, 1])])
    assert leveled.programmable_bootstrap_count == 0
    assert len(outputs_reachable_without_a_lookup(leveled.graph)) == 1


def test_clear_function_matches_fhe_simulation(model, case):
    X = random_rows(CASES[case][4], seed=11)
    assert np.array_equal(model.simulate(X), model.predict(X))


def test_clear_function_matches_real_fhe_execution(model):
    X = random_rows(3, seed=12)
    assert np.array_equal(model.execute(X), model.predict(X))


def test_saved_model_predicts_like_the_compiled_one(model, saved):
    directory, vault = saved
    loaded = load_model(directory, vault)
    X = random_rows(2000, seed=13)
    assert np.array_equal(loaded.predict(X), model.predict(X))
    assert loaded.version == "v1" and loaded.layout.to_dict() == model.layout.to_dict()
    assert loaded.client_specs() == (directory / "deployment" / model.backend.specs_file).read_bytes()
    assert (directory / "deployment" / "server.zip").exists()


def test_saved_model_refuses_a_foreign_key_and_modified_artifacts(model, saved):
    directory, vault = saved
    with pytest.raises(SealError, match="another key"):
        load_model(directory, Vault(Fernet.generate_key()))
    assert b"edges" not in (directory / "meta.json.sealed").read_bytes()  # encrypted at rest
    for artifact in ("server.zip", model.backend.specs_file):
        path = directory / "deployment" / artifact
        original = path.read_bytes()
        path.write_bytes(original + b"x")
        with pytest.raises(SealError, match="deployment artifacts"):
            load_model(directory, vault)
        path.write_bytes(original)
    load_model(directory, vault)


def test_a_server_artifact_modified_after_loading_is_refused_at_first_use(model, saved):
    directory, vault = saved
    loaded = load_model(directory, vault)
    with open(directory / "deployment" / "server.zip", "ab") as server_zip:
        server_zip.write(b"x")
    with pytest.raises(SealError, match="server.zip was modified"):
        loaded.prepare()


def test_warm_up_inputs_fit_the_circuit_and_run_with_a_party_key(saved):
    """Uploads run a new key once on throwaway inputs of every party's shape (JobRunner.warm)."""
    loaded = load_model(*saved)
    party = fhe.Client(loaded.backend.client_specs_object(loaded))
    party.keys.generate()
    inputs = loaded.warm_up_inputs()
    assert len(inputs) == len(loaded.layout.names) and loaded.warm_up_inputs() is inputs
    assert fhe.Value.deserialize(loaded.run_encrypted(inputs, party.evaluation_keys))


def test_a_saved_thermometer_model_brings_its_warm_up_so_no_executor_makes_keys(model, saved, monkeypatch):
    """The throwaway inputs and key skeleton are made once at the fit and sealed with the model:
    an executor loading it makes no key (a keygen each, while the first applicants upload)."""
    directory, vault = saved
    if model.engine != "thermometer":
        pytest.skip("concrete-ml's deployment is its own: its executors still make the warm-up")
    from anonymizer.engines import concrete_backend

    def no_keygen(*args):
        raise AssertionError("an executor made a throwaway key")

    monkeypatch.setattr(concrete_backend, "throwaway_warm_up", no_keygen)
    loaded = load_model(directory, vault)
    party = fhe.Client(loaded.backend.client_specs_object(loaded))
    party.keys.generate()
    assert loaded.checked_keys(party.evaluation_keys.serialize())  # the sealed skeleton fits
    loaded.screen_keys(party.evaluation_keys.serialize())  # the HTTP worker's door check
    with pytest.raises(ValueError, match="served circuit"):
        loaded.screen_keys(other_circuits_keys())  # refused before it is stored
    assert fhe.Value.deserialize(loaded.run_encrypted(loaded.warm_up_inputs(), party.evaluation_keys))
    warm_up = directory / "deployment" / concrete_backend.WARM_UP_FILE
    warm_up.write_text(warm_up.read_text().replace('"key_skeleton": "', '"key_skeleton": "0'))
    with pytest.raises(SealError, match="deployment artifacts"):
        load_model(directory, vault)


def test_ciphertexts_that_do_not_parse_are_a_value_error(saved):
    loaded = load_model(*saved)
    party = fhe.Client(loaded.backend.client_specs_object(loaded))
    party.keys.generate()
    garbage = [b"not a ciphertext"] * len(loaded.layout.names)
    with pytest.raises(ValueError, match="not a serialized concrete value"):
        loaded.run_encrypted(garbage, party.evaluation_keys)
