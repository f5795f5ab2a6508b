"""Each file under MODEL_DIR corrupted, truncated or deleted, live and after a restart: `GET /`
still answers 200 and names the problem, serving routes answer 503 (never another 5xx), and
`POST /fit` (for the key registry: uploading the key again) recovers."""

import dataclasses
import shutil

import anomed_utils as utils
import pytest
import requests
from helpers import plaintext_labels, quiet_party, random_rows
from inprocess import InProcessServer, config_for

from anonymizer.wire import Claim

MUTATIONS = ("corrupt", "truncate", "delete")


def mutate(path, how: str) -> None:
    """Damage `path` the way disks and operators do."""
    if how == "delete":
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        return
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        for i in range(len(data) // 3, len(data) // 3 + 8):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))


def version_dir(model_dir):
    return next(p for p in (model_dir / "versions").iterdir() if not p.name.startswith("."))


STORE_FILES = {
    "pointer": lambda d: d / "current.json",
    "model key": lambda d: d / "model.key",
    "model metadata": lambda d: version_dir(d) / "meta.json.sealed",
    "circuit": lambda d: version_dir(d) / "deployment" / "server.zip",
    "version directory": version_dir,
}


def plaintext(url: str, rows=2):
    body = utils.named_ndarrays_to_bytes({"X": random_rows(rows, seed=51)})
    return requests.post(url + "/predict", data=body, timeout=60)


def probe_every_route(url: str) -> dict[str, int]:
    """Status of each serving route; the caller asserts none is a 5xx other than 503."""
    return {
        "GET /": requests.get(url + "/").status_code,
        "POST /predict": plaintext(url).status_code,
        "GET /fhe/info": requests.get(url + "/fhe/info").status_code,
        "GET /fhe/specs": requests.get(url + "/fhe/specs").status_code,
        "POST /fhe/keys": requests.post(url + "/fhe/keys", data=b"k").status_code,
        "POST /evaluate": requests.post(url + "/evaluate?data_split=tuning").status_code,
    }


# a directory is only deleted
STORE_FAULTS = [
    (kind, how) for kind in STORE_FILES for how in MUTATIONS if kind != "version directory" or how == "delete"
]


@pytest.mark.parametrize("restart", [False, True], ids=["live", "restarted"])
@pytest.mark.parametrize("kind,how", STORE_FAULTS)
def test_damaged_store_never_bricks_and_fit_recovers(kind, how, restart, model_dir, stub):
    with InProcessServer(config_for(model_dir, stub)) as server:
        assert plaintext(server.url).status_code == 201  # serving before the fault
        mutate(STORE_FILES[kind](model_dir), how)
        if restart:
            server.restart()
        statuses = probe_every_route(server.url)
        assert statuses["GET /"] == 200, statuses
        assert all(s < 500 or s == 503 for s in statuses.values()), statuses
        state = requests.get(server.url + "/").json()
        if restart:  # a fresh process reads everything: the damage must show, with its reason
            assert state["state"] != "serving" and state["problems"], state
            assert statuses["POST /predict"] == 503, statuses
            description = plaintext(server.url).json()["description"]
            assert "/fit" in description or "key" in description
        response = requests.post(server.url + "/fit", timeout=300)
        assert response.status_code == 201, response.text
        assert requests.get(server.url + "/").json()["state"] == "serving"
        assert plaintext(server.url).status_code == 201
        server.restart()  # and the repair survives a restart
        assert requests.get(server.url + "/").json()["problems"] == []
        assert plaintext(server.url).status_code == 201


def test_a_wrong_configured_key_is_reported_and_fit_asks_for_the_right_one(model_dir, stub, tmp_path):
    bad_key_file = tmp_path / "secret.key"
    bad_key_file.write_text("not a fernet key")
    config = config_for(model_dir, stub)
    broken = dataclasses.replace(config, model_key_file=bad_key_file)
    with InProcessServer(broken) as server:
        state = requests.get(server.url + "/").json()
        assert state["state"] == "unavailable" and "does not hold a Fernet key" in state["problems"][0]
        response = requests.post(server.url + "/fit", timeout=300)
        assert response.status_code == 503 and "configure the right key" in response.json()["description"]
        bad_key_file.write_text((model_dir / "model.key").read_text())  # the operator fixes it
        assert requests.get(server.url + "/").json()["state"] == "serving"
        assert plaintext(server.url).status_code == 201


REGISTRY_FILES = {
    "key metadata": lambda key_dir: key_dir / "meta.json",
    "evaluation key": lambda key_dir: key_dir / "evaluation.keys",
    "staged input": lambda key_dir: key_dir / "input-1.bin",  # the bank's
}


@pytest.mark.parametrize("restart", [False, True], ids=["live", "restarted"])
@pytest.mark.parametrize("how", MUTATIONS)
@pytest.mark.parametrize("kind", list(REGISTRY_FILES))
def test_damaged_key_registry_answers_4xx_and_a_new_upload_recovers(
    kind, how, restart, model_dir, stub, tmp_path, keys_dir
):
    for stale in keys_dir.rglob("server-key-id.json"):  # uploaded to another test's copy
        stale.unlink()
    with InProcessServer(config_for(model_dir, stub)) as server:
        party = quiet_party(server.url, tmp_path / "party", keys_dir=keys_dir)
        row = random_rows(1, seed=52)[0]
        values = {p: row[c].tolist() for p, c in party.info().parties.items()}
        party.stage("bank", party.encrypt("bank", values["bank"]))
        key_dirs = [p for p in (model_dir / "keys").iterdir() if not p.name.startswith(".")]
        mutate(REGISTRY_FILES[kind](key_dirs[0]), how)
        if restart:
            server.restart()
            party.server_url = server.url
        key_id = party.key_id()
        ciphertext = party.encrypt("applicant", values["applicant"])
        answers = [
            requests.put(
                f"{server.url}/fhe/keys/{key_id}/inputs/credit_bureau",
                data=party.encrypt("credit_bureau", values["credit_bureau"]),
            ),
            requests.post(
                server.url + "/predict",
                files={"key_id": (None, key_id), "applicant": ("a", ciphertext, "application/octet-stream")},
            ),
        ]
        for answer in answers:
            assert answer.status_code in (201, 400, 404), (answer.status_code, answer.text)
            assert answer.status_code == 201 or answer.json()["description"]
        assert requests.get(server.url + "/").status_code == 200
        # recovery as the SDK does it: a 404 re-uploads the key; the bank stages again
        party.stage("bank", party.encrypt("bank", values["bank"]))
        label, _ = party.score({"applicant": values["applicant"], "credit_bureau": values["credit_bureau"]})
        assert label == plaintext_labels(server, row[None])[0]


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory):
    """One party key set for the template's model version, generated once (keygen takes seconds)."""
    return tmp_path_factory.mktemp("party-keys")


def test_workers_boot_with_a_corrupted_key_and_pointer_and_fit_recovers(start_anonymizer, tmp_path):
    model_dir = tmp_path / "model"
    server = start_anonymizer(model_dir=model_dir, TREE_MAX_DEPTH="3")
    assert requests.post(server.url + "/fit").status_code == 201
    server.stop()
    mutate(model_dir / "model.key", "truncate")
    mutate(model_dir / "current.json", "corrupt")
    server = start_anonymizer(model_dir=model_dir, TREE_MAX_DEPTH="3")  # waits for GET / to answer
    workers = server.worker_pids()
    assert len(workers) == 2
    state = requests.get(server.url + "/").json()
    assert state["state"] == "unavailable" and "model key" in state["problems"][0]
    assert plaintext(server.url).status_code == 503
    assert requests.post(server.url + "/fit").status_code == 201
    for _ in range(6):  # both workers follow the new key and pointer
        assert plaintext(server.url).status_code == 201
    assert list(model_dir.glob("model.key.unreadable-*"))
    assert server.worker_pids() == workers  # no worker died on the way


def test_an_input_staged_for_several_uses_serves_that_many_predictions(tmp_path):
    from anonymizer.state.keys import KeyRegistry
    from anonymizer.state.staged import StagedInputs

    registry = KeyRegistry(tmp_path / "keys")
    key_id = registry.add(b"public key", Claim("v1", "d1"), "owner", screen=lambda serialized: None)
    staged = StagedInputs(registry)
    staged.stage(key_id, 1, b"bank ciphertext", uses=3)
    assert staged.take(key_id, [1]) == {1: b"bank ciphertext"}
    taken = staged.take(key_id, [1])
    staged.put_back(key_id, taken)  # a failed prediction gives its use back
    assert [staged.take(key_id, [1]) for _ in range(3)] == [{1: b"bank ciphertext"}] * 2 + [{}]
    with pytest.raises(ValueError, match="uses must be 1 to 128"):
        staged.stage(key_id, 1, b"x", uses=129)
    staged.stage(key_id, 2, b"bureau ciphertext")  # the default: one prediction
    assert staged.take(key_id, [2]) == {2: b"bureau ciphertext"} and staged.take(key_id, [2]) == {}
