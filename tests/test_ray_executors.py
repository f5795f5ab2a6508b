"""Distributed execution on a real Ray cluster (a head and two worker nodes, separate processes on
127.0.0.1) behind real gunicorn: a key lives on one node; that node dies; requests for the key
succeed after another node reloads it from the store, and staged inputs are not lost."""

import time

import pytest
import requests
from helpers import CREDIT_ENV, multipart, plaintext_labels, quiet_party, random_rows
from raycluster import LocalRayCluster

from anonymizer.execution.base import shard
from anonymizer.party import PartyClient
from devtools.launch import GunicornServer

ray = pytest.importorskip("ray")

EXECUTORS = 2


@pytest.fixture
def cluster(tmp_path):
    logs = tmp_path / "ray-logs"
    logs.mkdir()
    with LocalRayCluster(logs) as cluster:
        cluster.add_node(cpus=2)
        cluster.add_node(cpus=2)
        ray.init(address=cluster.address, namespace="anonymizer", log_to_driver=False)
        try:
            cluster.wait_for_nodes(3)
            yield cluster
        finally:
            ray.shutdown()


def node_of(key_id: str) -> int:
    """The node manager port of the node whose actor holds `key_id`."""
    actor = ray.get_actor(f"key-holder-{shard(key_id, EXECUTORS)}")
    node_id = ray.get(actor.node.remote(), timeout=60)
    return next(n["NodeManagerPort"] for n in ray.nodes() if n["NodeID"] == node_id)


def predict_patiently(party: PartyClient, ciphertexts: dict, seconds: float = 180.0) -> bytes:
    """The encrypted result, retrying 503 (the executor is being restarted) until `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        parts = multipart(party.key_id(), party.version, **ciphertexts)
        response = requests.post(party.server_url + "/predict", files=parts, timeout=600)
        if response.status_code != 503 or time.monotonic() > deadline:
            assert response.status_code == 201, response.text
            return response.content
        time.sleep(1.0)


def test_a_key_survives_the_loss_of_its_node(cluster, model_dir, stub, tmp_path):
    environment = {
        **CREDIT_ENV,
        "CHALLENGE_HOST": stub.host,
        "MODEL_DIR": str(model_dir),
        "FHE_EXECUTION": "ray",
        "RAY_ADDRESS": cluster.address,
        "FHE_EXECUTORS": str(EXECUTORS),
    }
    log = tmp_path / "gunicorn.log"
    with GunicornServer("app:application", env=environment, log_path=log) as server:
        applicant = quiet_party(server.url, tmp_path / "keys")
        bank = quiet_party(server.url, tmp_path / "keys")
        rows = random_rows(2, seed=91)
        parties = applicant.info().parties
        values = [{p: row[c].tolist() for p, c in parties.items()} for row in rows]
        labels = plaintext_labels(server, rows)

        def score(row: int) -> object:
            """The applicant sends its ciphertext; bank and bureau staged theirs."""
            mine = {"applicant": applicant.encrypt("applicant", values[row]["applicant"])}
            return applicant.decrypt(predict_patiently(applicant, mine))[0]

        key_id = applicant.key_id()  # uploaded, and warmed on its actor
        home = node_of(key_id)
        others = [name for name in parties if name != "applicant"]
        for party in others:
            bank.stage(party, bank.encrypt(party, values[0][party]))
        assert score(0) == labels[0]

        for party in others:  # staged before the node dies: in MODEL_DIR, not on it
            bank.stage(party, bank.encrypt(party, values[1][party]))
        cluster.kill(home)
        assert score(1) == labels[1]
        assert node_of(key_id) != home  # reloaded on the surviving node
