"""Keys pinned by their owners (issue 32, item 3): the party SDK does not take its cryptography on
the server's word. A man in the middle on 127.0.0.1 plays the lying server: it forwards every
request to the real one, but serves its own Paillier public key for `GET /fhe/keys/{id}`, or
doctored TFHE client specs for `GET /fhe/specs`. A co-party that joins with the applicant's
fingerprint refuses the substituted key before encrypting anything; keygen refuses specs below
concrete's 128-bit security curve; the honest path through the same proxy works."""

import json
import re
import subprocess
import sys
import threading

import numpy as np
import phe
import pytest
import requests
from helpers import CREDIT_ENV, plaintext_labels, quiet_party, random_rows

from anonymizer.engines.paillier import scheme
from anonymizer.party.client import KeyMismatch, normalize_fingerprint, readable_fingerprint
from anonymizer.party.codecs import PaillierCodec, _one_function_specs
from anonymizer.party.console import loopback_server
from anonymizer.party.security import InsecureParameters, check_client_specs, minimal_variance
from challenge_stub.dataset import PARTY_LAYOUT
from devtools.launch import GunicornServer

KEY_PATH = re.compile(r"^/fhe/keys/[^/]+$")
HOP_BY_HOP = {"connection", "content-encoding", "content-length", "keep-alive", "transfer-encoding"}


class LyingProxy:
    """Forwards every request to `upstream` with `requests`; `rewrite[(method, pattern)]` may
    replace an answer's body (the pattern sees the path and its query, `?…`). `seen` lists (method, path) of everything forwarded."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.rewrites: list[tuple[str, re.Pattern, object]] = []
        self.seen: list[tuple[str, str]] = []
        self._server = None

    def lie(self, method: str, pattern: re.Pattern, rewrite) -> None:
        """From now on, `rewrite(body) -> body` for answers to `method` on paths matching."""
        self.rewrites.append((method, pattern, rewrite))

    def honest(self) -> None:
        self.rewrites.clear()

    def _app(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_") and key not in ("HTTP_HOST", "HTTP_CONNECTION")
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        self.seen.append((method, path))
        url = f"{self.upstream}{path}" + (f"?{query}" if query else "")
        answer = requests.request(method, url, data=body, headers=headers, timeout=600)
        content = answer.content
        for rewritten_method, pattern, rewrite in self.rewrites:
            target = path + (f"?{query}" if query else "")
            if method == rewritten_method and pattern.match(target) and answer.status_code == 200:
                content = rewrite(content)
        kept = [(k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP]
        start_response(
            f"{answer.status_code} {answer.reason}", [*kept, ("Content-Length", str(len(content)))]
        )
        return [content]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> "LyingProxy":
        self._server = loopback_server(self._app)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- Paillier: the co-parties pin the applicant's public key by its fingerprint ---------------


@pytest.fixture(scope="module")
def paillier_server(tmp_path_factory, stub):
    model_dir = tmp_path_factory.mktemp("pinned-paillier-model")
    env = {
        **CREDIT_ENV,
        "ANONYMIZER_ENCRYPTION": "paillier",
        "TREE_SELECTION": "off",  # one additive model: these tests are about keys, not selection
        "TREE_ADDITIVE": "1",
        "CHALLENGE_HOST": stub.host,
        "MODEL_DIR": str(model_dir),
        "MAX_KEYS_PER_OWNER": "64",
    }
    server = GunicornServer("app:application", env=env, log_path=model_dir.parent / "pinned-paillier.log")
    with server:
        response = requests.post(server.url + "/fit", timeout=900)
        assert response.status_code == 201, response.text
        yield server


@pytest.fixture(scope="module")
def servers_key():
    """The key pair the lying server substitutes for the applicant's public key."""
    public_key, private_key = phe.generate_paillier_keypair(n_length=scheme.MIN_MODULUS_BITS)
    return public_key, private_key


@pytest.fixture
def proxy(paillier_server):
    with LyingProxy(paillier_server.url) as proxy:
        yield proxy


def by_party(row: np.ndarray) -> dict:
    return {party: row[columns].tolist() for party, columns in PARTY_LAYOUT.items()}


def substitute(public_key):
    return lambda served: scheme.public_key_bytes(public_key)


def nothing_kept(workdir) -> bool:
    names = {path.name for path in workdir.rglob("*")}
    return not names & {"paillier-public.json", "paillier-private.json", "server-key-id.json"}


def test_a_substituted_public_key_is_refused_before_anything_is_encrypted(
    paillier_server, proxy, servers_key, tmp_path, monkeypatch
):
    applicant = quiet_party(paillier_server.url, tmp_path / "applicant")  # talks to the real server
    key_id, fingerprint = applicant.key_id(), applicant.key_fingerprint()
    assert fingerprint == scheme.fingerprint(applicant.codec().public_key)
    encryptions = []
    real_encrypt = PaillierCodec.encrypt
    monkeypatch.setattr(
        PaillierCodec, "encrypt", lambda self, *a, **k: encryptions.append(a) or real_encrypt(self, *a, **k)
    )

    proxy.lie("GET", KEY_PATH, substitute(servers_key[0]))
    bank = quiet_party(proxy.url, tmp_path / "bank")
    with pytest.raises(KeyMismatch, match="not the applicant's") as refused:
        bank.join(key_id, readable_fingerprint(fingerprint))
    assert readable_fingerprint(scheme.fingerprint(servers_key[0])) in str(refused.value)
    assert isinstance(refused.value, ValueError)
    assert nothing_kept(tmp_path / "bank") and bank.known_key_id() is None
    assert encryptions == []
    assert ("GET", f"/fhe/keys/{key_id}") in proxy.seen

    # the same co-party as a CLI process (join, then stage): refused at the join, nothing staged
    values = by_party(random_rows(1, seed=61)[0])
    command = [sys.executable, "-m", "anonymizer.party", "--server", proxy.url]
    command += ["--workdir", str(tmp_path / "bureau"), "--key-id", key_id, "--fingerprint", fingerprint]
    command += ["stage", "--party", "credit_bureau", "--values", json.dumps(values["credit_bureau"])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "not the applicant's" in result.stderr, result.stderr[-2000:]
    assert nothing_kept(tmp_path / "bureau")
    assert not [seen for seen in proxy.seen if seen[0] in ("PUT", "POST")]  # no ciphertext left


def test_the_honest_path_through_the_same_proxy_decides(paillier_server, proxy, tmp_path):
    applicant = quiet_party(paillier_server.url, tmp_path / "applicant")
    key_id, fingerprint = applicant.key_id(), applicant.key_fingerprint()
    row = random_rows(1, seed=62)[0]
    values = by_party(row)
    for party in ("bank", "credit_bureau"):
        client = quiet_party(proxy.url, tmp_path / party)
        client.join(key_id, fingerprint.upper())  # any case, any grouping
        assert client.key_fingerprint() == fingerprint
        client.stage(party, client.encrypt(party, values[party]))
    label, _ = applicant.score({"applicant": values["applicant"]})
    assert label == plaintext_labels(paillier_server, row[None])[0]
    assert ("PUT", f"/fhe/keys/{key_id}/inputs/bank") in proxy.seen


def test_a_joined_key_changed_on_disk_is_refused_when_loaded(paillier_server, servers_key, tmp_path):
    applicant = quiet_party(paillier_server.url, tmp_path / "applicant")
    key_id, fingerprint = applicant.key_id(), applicant.key_fingerprint()
    bank = quiet_party(paillier_server.url, tmp_path / "bank")
    bank.join(key_id, fingerprint)
    (public_file,) = (tmp_path / "bank").rglob("paillier-public.json")
    public_file.write_bytes(scheme.public_key_bytes(servers_key[0]))
    later = quiet_party(paillier_server.url, tmp_path / "bank")  # a later run of the co-party
    with pytest.raises(KeyMismatch, match="not the one pinned"):
        later.encrypt("bank", by_party(random_rows(1, seed=63)[0])["bank"])
    later.join(key_id, fingerprint)  # joining again with the right fingerprint repairs it
    assert later.key_fingerprint() == fingerprint


def test_join_needs_a_well_formed_fingerprint(paillier_server, tmp_path):
    applicant = quiet_party(paillier_server.url, tmp_path / "applicant")
    key_id, fingerprint = applicant.key_id(), applicant.key_fingerprint()
    assert (
        normalize_fingerprint("SHA256:" + readable_fingerprint(fingerprint).replace(" ", ":")) == fingerprint
    )
    bank = quiet_party(paillier_server.url, tmp_path / "bank")
    for bad in ("", fingerprint[:40], fingerprint[:-1] + "g"):
        with pytest.raises(ValueError, match="64 hexadecimal digits"):
            bank.join(key_id, bad)
    assert nothing_kept(tmp_path / "bank")
    command = [sys.executable, "-m", "anonymizer.party", "--server", paillier_server.url]
    command += ["--workdir", str(tmp_path / "bank"), "--key-id", key_id, "info"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--fingerprint" in result.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "anonymizer.party", "--server", paillier_server.url]
        + ["--workdir", str(tmp_path / "applicant"), "upload-key"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0 and shown.stdout.strip() == key_id
    assert readable_fingerprint(fingerprint) in shown.stderr  # to be read out with the key id


# --- TFHE: keygen checks the served parameters against concrete's security curve --------------


def doctored(specs: bytes, how: str) -> bytes:
    """The served client specs with the small LWE key made tiny, or its noise made negligible."""
    document = json.loads(specs)
    keyset = document["keyset"]
    small = min(keyset["lweSecretKeys"], key=lambda key: key["params"]["lweDimension"])["id"]
    for keyswitch in keyset["lweKeyswitchKeys"]:
        if keyswitch["outputId"] == small:
            if how == "dimension":
                keyswitch["params"]["outputLweDimension"] = 256
            else:
                keyswitch["params"]["variance"] = 2.0**-120
    if how == "dimension":
        for key in keyset["lweSecretKeys"]:
            if key["id"] == small:
                key["params"]["lweDimension"] = 256
        for bootstrap in keyset["lweBootstrapKeys"]:
            if bootstrap["inputId"] == small:
                bootstrap["params"]["inputLweDimension"] = 256
    return json.dumps(document).encode()


@pytest.fixture
def tfhe_server(model_dir, stub):
    from inprocess import InProcessServer, config_for

    with InProcessServer(config_for(model_dir, stub)) as server:
        yield server


def test_the_security_curve_is_concretes():
    # concrete-security-curves-rust: secure_log2_std(512, 64) lies in (-12, -10) at 128 bits
    assert -12 < np.log2(minimal_variance(512)) / 2 < -10
    assert minimal_variance(449) == float("inf")
    assert np.log2(minimal_variance(1 << 16)) / 2 == pytest.approx(-62)  # the 2 lowest bits floor


def test_the_real_served_specs_pass_and_keygen_works(tfhe_server, tmp_path):
    from concrete import fhe

    specs = requests.get(tfhe_server.url + "/fhe/specs?functions=all", timeout=60).content
    check_client_specs(fhe.ClientSpecs.deserialize(specs))
    party = quiet_party(tfhe_server.url, tmp_path / "party")
    party.keygen()
    assert party.key_fingerprint() is None  # nothing to pin under TFHE: the keys dir is shared
    assert any(path.is_file() for path in party.key_dir.rglob("*"))


@pytest.mark.parametrize("how", ["dimension", "noise"])
def test_doctored_specs_are_refused_before_any_key_is_made(tfhe_server, tmp_path, how):
    from concrete import fhe

    with LyingProxy(tfhe_server.url) as proxy:
        proxy.lie("GET", re.compile(r"^/fhe/specs(\?functions=all)?$"), lambda specs: doctored(specs, how))
        party = quiet_party(proxy.url, tmp_path / "party")
        problem = "LWE dimension 256" if how == "dimension" else "noise variance"
        with pytest.raises(InsecureParameters, match=problem):
            party.keygen()
        assert not [path for path in party.keys_dir.rglob("*") if path.is_file()]
        with pytest.raises(InsecureParameters, match="not secure"):
            party.encrypt("bank", by_party(random_rows(1, seed=64)[0])["bank"])
        assert not [seen for seen in proxy.seen if seen[0] in ("PUT", "POST")]  # nothing uploaded
        served = requests.get(tfhe_server.url + "/fhe/specs?functions=all", timeout=60).content
        with pytest.raises(InsecureParameters):
            check_client_specs(fhe.ClientSpecs.deserialize(doctored(served, how)))


def _circuit_names(client) -> list[str]:
    return [circuit["name"] for circuit in json.loads(client.specs.serialize())["circuits"]]


@pytest.mark.parametrize("how", ["dimension", "noise"])
def test_each_function_is_encrypted_with_specs_cut_from_the_checked_module_specs(tfhe_server, tmp_path, how):
    """The SDK encrypts and decrypts each function with that function's specs alone, cut locally
    from the module's specs it checked: a server that doctors the decision's own specs
    (`/fhe/specs`) gets nothing made with them, and the decision stands."""
    with LyingProxy(tfhe_server.url) as proxy:
        proxy.lie("GET", re.compile(r"^/fhe/specs$"), lambda specs: doctored(specs, how))
        party = quiet_party(proxy.url, tmp_path / "party")
        row = random_rows(1, seed=65)[0]
        decision = party.score(by_party(row))
        assert decision.label == plaintext_labels(tfhe_server, row[None])[0]
        codec = party.codec()
        client, name = codec._client_of("decide")
        assert name == codec.functions["decide"] and _circuit_names(client) == [name]
        assert len(_circuit_names(codec.client)) > 1  # the served module: cut from it, not fetched
        with pytest.raises(ValueError, match="no function"):
            _one_function_specs(codec._fhe, codec.specs, "not_served")
    assert [seen for seen in proxy.seen if seen[1] == "/fhe/specs"] == [
        ("GET", "/fhe/specs")
    ]  # functions=all only
