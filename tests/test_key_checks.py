"""Keys are checked before they are kept: a size cap per scheme before the body is read, and a TFHE
key whose structure is not the served circuit's (another model's keys, or a genuine key that lies
about one dimension) is refused with 400 and deleted — never run, since concrete's runtime trusts
a key's own dimensions and crashes the executor that runs a key made for another circuit."""

import shutil
import struct

import pytest
import requests
from helpers import quiet_party, random_rows
from inprocess import InProcessServer, config_for

from anonymizer.engines import keyset
from anonymizer.engines.paillier import scheme
from challenge_stub.dataset import PARTY_LAYOUT


def stored_keys(model_dir) -> set[str]:
    root = model_dir / "keys"
    return {p.name for p in root.iterdir() if not p.name.startswith(".")} if root.exists() else set()


@pytest.fixture(scope="module")
def served(fitted_template, tmp_path_factory, stub):
    """The template's TFHE model served in process; a genuine party's keys made once."""
    model_dir = tmp_path_factory.mktemp("key-checks") / "model"
    shutil.copytree(fitted_template, model_dir)
    with InProcessServer(config_for(model_dir, stub)) as server:
        party = quiet_party(server.url, tmp_path_factory.mktemp("key-checks-party"))
        party.keygen()
        server.model_dir, server.genuine = model_dir, party.codec().evaluation_keys()
        yield server


def other_circuits_keys() -> bytes:
    """Evaluation keys of another circuit (a 3-bit lookup), compiled as the engine compiles."""
    from concrete import fhe

    from anonymizer.engines._compat import ensure_tag_stack
    from anonymizer.engines.thermometer.leafsum import COMPILE_OPTIONS

    ensure_tag_stack()

    @fhe.compiler({"x": "encrypted"})
    def other(x):
        return fhe.LookupTable([7 - i for i in range(8)])[x]

    circuit = other.compile(range(8), fhe.Configuration(**COMPILE_OPTIONS))
    client = fhe.Client(circuit.client.specs)
    client.keys.generate()
    return client.keys.evaluation.serialize()


def lying_about_its_polynomial_size(genuine: bytes, specs) -> bytes:
    """The genuine keys with the bootstrap key's polynomial size doubled in its description: the
    same length, the same payload; the runtime would read past it."""
    size = specs.program_info.get_keyset_info().bootstrap_keys()[0].polynomial_size()
    head = genuine[:4096]  # the descriptions come before the payloads
    at = head.find(struct.pack("<I", size))
    assert at > 0, "the polynomial size is written in the keys' description"
    return genuine[:at] + struct.pack("<I", size * 2) + genuine[at + 4 :]


def decides(server, tmp_path, seed: int) -> bool:
    party = quiet_party(server.url, tmp_path / f"party-{seed}")
    row = random_rows(1, seed=seed)[0]
    label, _ = party.score({name: row[columns].tolist() for name, columns in PARTY_LAYOUT.items()})
    return label is not None


def test_the_skeleton_tells_the_served_circuits_keys_from_others(served):
    assert keyset.skeleton(served.genuine) == keyset.skeleton(served.genuine)
    assert keyset.skeleton(other_circuits_keys()) != keyset.skeleton(served.genuine)


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00\x00\x01\x00\x00\x00"
        + struct.pack("<Q", 0xFFFFFFFC | 1 << 48),  # a struct that is its own child
        b"\xff\xff\xff\xff" + bytes(60),  # 2^32 segments
        b"\x00\x00\x00\x00\x10\x00\x00\x00" + bytes(8),  # a segment longer than the message
        bytes(7),
    ],
)
def test_malformed_messages_are_refused_by_the_walk(body):
    with pytest.raises(keyset.MalformedKeys):
        keyset.skeleton(body)


def test_keys_of_another_circuit_are_refused_and_not_kept(served, tmp_path):
    before = stored_keys(served.model_dir)
    answer = requests.post(served.url + "/fhe/keys", data=other_circuits_keys(), timeout=120)
    assert answer.status_code == 400, answer.text
    assert "served circuit" in answer.json()["description"]
    assert stored_keys(served.model_dir) == before
    assert decides(served, tmp_path, seed=1)  # the executor that would have run them lives


def test_a_genuine_key_that_lies_about_a_dimension_is_refused_and_not_kept(served, tmp_path):
    from concrete import fhe

    specs = fhe.ClientSpecs.deserialize(requests.get(served.url + "/fhe/specs", timeout=30).content)
    lying = lying_about_its_polynomial_size(served.genuine, specs)
    assert len(lying) == len(served.genuine)
    before = stored_keys(served.model_dir)
    answer = requests.post(served.url + "/fhe/keys", data=lying, timeout=120)
    assert answer.status_code == 400, answer.text
    assert stored_keys(served.model_dir) == before
    genuine = requests.post(served.url + "/fhe/keys", data=served.genuine, timeout=120)
    assert genuine.status_code == 201
    assert decides(served, tmp_path, seed=2)


def upload_of(url: str, size: int) -> int:
    """The status answered to a key upload of `size` zero bytes (never a key: 400 once parsed)."""
    return requests.post(url + "/fhe/keys", data=bytes(size), timeout=120).status_code


def test_a_tfhe_key_larger_than_the_served_keyset_is_413_before_it_is_read(served):
    bound = served_bound(served)
    assert len(served.genuine) <= bound < 256 * 1024 * 1024  # tighter than MAX_KEY_BYTES
    assert upload_of(served.url, bound + 1) == 413  # refused on its declared size, unparsed
    assert upload_of(served.url, bound) == 400


def served_bound(server) -> int:
    from anonymizer.engines.registry import load_model
    from anonymizer.state.models import ModelStore
    from anonymizer.state.vault import ModelKeySource

    store = ModelStore(server.model_dir, ModelKeySource(server.model_dir), load_model)
    return store.current().max_key_bytes


def test_a_paillier_key_is_capped_at_a_few_kilobytes(paillier_template, tmp_path, stub):
    model_dir = tmp_path / "model"
    shutil.copytree(paillier_template, model_dir)
    with InProcessServer(config_for(model_dir, stub)) as server:
        assert upload_of(server.url, scheme.MAX_PUBLIC_KEY_BYTES + 1) == 413
        assert upload_of(server.url, scheme.MAX_PUBLIC_KEY_BYTES) == 400
        assert scheme.MAX_PUBLIC_KEY_BYTES < 4096
