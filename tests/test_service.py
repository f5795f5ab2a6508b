"""End to end: the real challenge stub and real anonymizers under gunicorn, talking HTTP."""

import concurrent.futures

import anomed_utils as utils
import numpy as np
import pytest
import requests
from anomed_deanonymizer import WebClassifier
from concrete import fhe
from concrete.ml.deployment import FHEModelClient, FHEModelServer
from helpers import STUB_ROWS, TWO_PARTY_LAYOUT, plaintext_labels, post_npz, random_rows

from anonymizer.engines.thermometer.decoding import decode_shares
from devtools.launch import GunicornServer, free_port


def current_deployment(server):
    version = requests.get(server.url + "/").json()["model_version"]
    return server.model_dir / "versions" / version / "deployment"


def fhe_labels_with_stock_concrete(server, deployment_dir, key_dir, X) -> np.ndarray:
    """Thermometer engine: each party encrypts the threshold bits of its own columns only."""
    info = requests.get(server.url + "/fhe/info").json()
    specs = fhe.ClientSpecs.deserialize((deployment_dir / "client.specs").read_bytes())
    client = fhe.Client(specs, keyset_cache_directory=key_dir)
    client.keygen()
    circuit_server = fhe.Server.load(deployment_dir / "server.zip")
    labels = []
    for row in X:
        ciphertexts = []
        for index, encoding in enumerate(info["encoding"].values()):
            bits = [
                int(x > e)
                for c in encoding["columns"]
                for x in [row[c]]
                for e in encoding["edges"][encoding["columns"].index(c)]
            ]
            args = [None] * len(info["encoding"])
            args[index] = np.array(bits)
            ciphertexts.append(fhe.Value.deserialize(client.encrypt(*args)[index].serialize()))
        # the deployed server may hold several functions (reason codes): it runs the decision's
        decide = info["functions"]["decide"]
        result = circuit_server.run(
            *ciphertexts, evaluation_keys=client.evaluation_keys, function_name=decide
        )
        shares = decode_shares(np.asarray(client.decrypt(result)), **info["decoding"])[0]
        labels.append(info["classes"][int(np.argmax(shares))])
    return np.array(labels)


def fhe_labels_with_stock_concrete_ml(deployment_dir, key_dir, parties, X) -> np.ndarray:
    """Each party encrypts only its own columns; the circuit runs on the ciphertexts; decrypt."""
    client = FHEModelClient(str(deployment_dir), key_dir=str(key_dir))
    client.generate_private_and_evaluation_keys()
    evaluation_keys = client.get_serialized_evaluation_keys()
    server = FHEModelServer(str(deployment_dir))
    labels = []
    for row in X:
        q_row = client.model.quantize_input(row.reshape(1, -1))
        ciphertexts = []
        for index, columns in enumerate(parties.values()):
            args = [None] * len(parties)
            args[index] = q_row[:, columns]
            ciphertexts.append(client.client.encrypt(*args)[index].serialize())
        encrypted_result = server.run(tuple(ciphertexts), evaluation_keys)
        probabilities = client.deserialize_decrypt_dequantize(encrypted_result)
        labels.append(int(np.argmax(probabilities, axis=1)[0]))
    return np.array(labels)


def test_fit_publishes_a_model_every_worker_reports(fitted_anonymizer):
    info = fitted_anonymizer.fit_info
    assert info["parties"] == {"applicant": list(range(12)), "bank": [12], "credit_bureau": [13, 14]}
    assert info["training_rows"] == int(0.6 * STUB_ROWS)
    assert info["pbs_count"] > 0
    status = requests.get(fitted_anonymizer.url + "/").json()
    assert status == {**status, "fitted": True, "model_version": info["model_version"]}


@pytest.mark.parametrize("split", ["tuning", "validation"])
def test_evaluate_submits_the_served_predictions(fitted_anonymizer, stub, credit_data, split):
    response = requests.post(fitted_anonymizer.url + "/evaluate", params={"data_split": split})
    assert response.status_code == 201, response.text
    X, y = credit_data[split]
    expected_accuracy = np.mean(plaintext_labels(fitted_anonymizer, X) == y)
    assert response.json()["evaluation"]["accuracy"] == pytest.approx(expected_accuracy)
    assert expected_accuracy > max(np.mean(y), 1 - np.mean(y)) + 0.05
    results = requests.get(stub.url + "/results").json()["results"]
    assert any(r["params"] == {"anonymizer": "fhe_anonymizer", "data_split": split} for r in results)


def test_predict_returns_labels_of_the_training_dtype_in_any_batch_size(fitted_anonymizer):
    X = random_rows(500, seed=21)
    labels = plaintext_labels(fitted_anonymizer, X)
    assert labels.shape == (500,) and labels.dtype == np.int64
    assert set(np.unique(labels)) <= {0, 1}
    assert np.array_equal(plaintext_labels(fitted_anonymizer, X, batch_size=7), labels)
    assert post_npz(fitted_anonymizer, X, batch_size=0).status_code == 400
    assert post_npz(fitted_anonymizer, X, batch_size="x").status_code == 400


def test_predict_works_through_the_deanonymizers_web_classifier(fitted_anonymizer):
    X = random_rows(50, seed=22)
    web = WebClassifier(url=fitted_anonymizer.url + "/predict", input_shape=(15,), nb_classes=2)
    assert np.array_equal(web.predict(X), plaintext_labels(fitted_anonymizer, X))


def test_bad_predict_bodies_are_4xx_and_the_service_keeps_serving(fitted_anonymizer):
    for body in [b"", b"garbage", utils.named_ndarrays_to_bytes({"X": np.ones((2, 3))})]:
        response = requests.post(fitted_anonymizer.url + "/predict", data=body)
        assert response.status_code == 400 and response.json()["description"]
    assert post_npz(fitted_anonymizer, random_rows(3, seed=1)).status_code == 201


def test_real_fhe_on_published_artifacts_matches_plaintext_predict(fitted_anonymizer, tmp_path):
    X = random_rows(3, seed=23)
    deployment = current_deployment(fitted_anonymizer)
    encrypted = fhe_labels_with_stock_concrete(fitted_anonymizer, deployment, tmp_path / "keys", X)
    assert np.array_equal(encrypted, plaintext_labels(fitted_anonymizer, X))


def test_two_party_non_contiguous_layout_end_to_end(start_anonymizer, tmp_path):
    server = start_anonymizer(parties=TWO_PARTY_LAYOUT, TREE_N_ESTIMATORS="3", TREE_MAX_DEPTH="4")
    response = requests.post(server.url + "/fit")
    assert response.status_code == 201, response.text
    model = response.json()["model"]
    assert model["parties"] == TWO_PARTY_LAYOUT and model["hyperparameters"]["model"] == "forest"
    X = random_rows(3, seed=24)
    encrypted = fhe_labels_with_stock_concrete(server, current_deployment(server), tmp_path / "keys", X)
    assert np.array_equal(encrypted, plaintext_labels(server, X))


def test_concrete_ml_engine_end_to_end_with_its_stock_client(start_anonymizer, tmp_path):
    server = start_anonymizer(FHE_ENGINE="concrete-ml", TREE_MAX_DEPTH="3")
    response = requests.post(server.url + "/fit")
    assert response.status_code == 201, response.text
    assert response.json()["model"]["engine"] == "concrete-ml"
    X = random_rows(2, seed=25)
    encrypted = fhe_labels_with_stock_concrete_ml(
        current_deployment(server), tmp_path / "keys", response.json()["model"]["parties"], X
    )
    assert np.array_equal(encrypted, plaintext_labels(server, X))


def test_layout_that_does_not_fit_the_data_is_a_clear_422(start_anonymizer):
    server = start_anonymizer(parties={"applicant": list(range(10)), "bank": [10, 11]})
    response = requests.post(server.url + "/fit")
    assert response.status_code == 422
    assert "columns [12, 13, 14] belong to no party" in response.json()["description"]
    assert requests.get(server.url + "/").json()["fitted"] is False


def test_unfitted_and_unreachable_challenge_are_503(start_anonymizer):
    server = start_anonymizer(challenge_host=f"127.0.0.1:{free_port()}")
    assert post_npz(server, random_rows(2, seed=2)).status_code == 503
    response = requests.post(server.url + "/fit")
    assert response.status_code == 503
    assert response.json()["description"]


def test_challenge_down_during_evaluate_is_503_and_model_keeps_serving(start_anonymizer, tmp_path):
    with GunicornServer(
        "challenge_stub.wsgi:application", env={"STUB_ROWS": "1000"}, workers=1
    ) as short_lived_stub:
        server = start_anonymizer(challenge_host=short_lived_stub.host)
        assert requests.post(server.url + "/fit").status_code == 201
    response = requests.post(server.url + "/evaluate", params={"data_split": "tuning"})
    assert response.status_code == 503
    assert "remote location" in response.json()["description"]
    assert post_npz(server, random_rows(2, seed=3)).status_code == 201
    assert requests.post(server.url + "/fit").status_code == 503


def test_second_fit_while_one_runs_is_503_and_refit_reaches_every_worker(start_anonymizer):
    server = start_anonymizer()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        statuses = sorted(
            f.result().status_code
            for f in [pool.submit(requests.post, server.url + "/fit") for _ in range(2)]
        )
    assert statuses == [201, 503]
    first = requests.get(server.url + "/").json()["model_version"]
    assert requests.post(server.url + "/fit").status_code == 201
    seen = {}
    for _ in range(40):
        status = requests.get(server.url + "/").json()  # a new connection each time
        seen[status["worker"]] = status["model_version"]
    assert len(seen) == 2, "both gunicorn workers should have answered"
    assert set(seen.values()) == {requests.get(server.url + "/").json()["model_version"]}
    assert first not in seen.values()
