"""Stateful fuzzing of the encrypted protocol (hypothesis state machine, real FHE, real HTTP):
upload keys -> stage -> predict -> refit -> stale keys -> re-upload, with mutated bodies and ids.
Invariants: never a 5xx other than 503, `GET /` always answers, well-formed requests decrypt to
the plaintext decision."""

import random
import secrets
import shutil

import anomed_utils as utils
import requests
from helpers import plaintext_labels, quiet_party, random_rows
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from inprocess import InProcessServer, config_for

PARTIES = ("applicant", "bank", "credit_bureau")


def damaged(data: bytes, how: str, rng) -> bytes:
    """`data` as a client bug or an attacker might send it."""
    if how == "truncate":
        return data[: rng.randrange(len(data))]
    if how == "flip":
        buffer = bytearray(data)
        position = rng.randrange(len(buffer))
        buffer[position] ^= 0xFF
        return bytes(buffer)
    if how == "random":
        return secrets.token_bytes(rng.randrange(1, 2048))
    return b""


def no_server_error(response: requests.Response) -> requests.Response:
    assert response.status_code < 500 or response.status_code == 503, (
        response.request.method,
        response.request.url,
        response.status_code,
        response.text[:300],
    )
    return response


def test_protocol_sequences_never_fail_the_server(fitted_template, tmp_path_factory, stub):
    keys_root = tmp_path_factory.mktemp("fuzz-party-keys")

    class Protocol(RuleBasedStateMachine):
        keys = Bundle("keys")

        def __init__(self) -> None:
            super().__init__()
            model_dir = tmp_path_factory.mktemp("fuzz") / "model"
            shutil.copytree(fitted_template, model_dir)
            self.server = InProcessServer(config_for(model_dir, stub)).start()
            for stale in keys_root.rglob("server-key-id.json"):
                stale.unlink()
            self.party = quiet_party(self.server.url, keys_root)
            self.row = random_rows(1, seed=61)[0]
            self.refits = 0
            self.intact: set[str] = set()  # key ids uploaded undamaged

        def teardown(self) -> None:
            self.server.stop()

        def values(self, party: str):
            return self.row[self.party.info().parties[party]].tolist()

        def expected_label(self):
            return plaintext_labels(self.server, self.row[None])[0]

        def current_keys(self) -> bytes:
            self.party.info(refresh=True)
            self.party.keygen()
            return self.party.codec().evaluation_keys()

        @rule(target=keys)
        def upload_key(self):
            response = no_server_error(requests.post(self.server.url + "/fhe/keys", data=self.current_keys()))
            assert response.status_code == 201, response.text
            self.intact.add(response.json()["key_id"])
            return response.json()["key_id"]

        @rule(
            target=keys,
            how=st.sampled_from(["truncate", "flip", "random", "empty"]),
            seed=st.integers(0, 2**16),
        )
        def upload_damaged_key(self, how, seed):
            body = damaged(self.current_keys(), how, random.Random(seed))
            response = no_server_error(requests.post(self.server.url + "/fhe/keys", data=body))
            if how != "flip":  # a flipped bit may still parse: FHE cannot tell a wrong key
                assert response.status_code == 400, response.text
            return response.json().get("key_id") if response.status_code == 201 else secrets.token_urlsafe(16)

        @rule(
            key_id=st.one_of(keys, keys, st.text(max_size=30)),
            party=st.sampled_from([*PARTIES, "x/../y"]),
            how=st.sampled_from(["valid", "valid", "truncate", "flip", "random", "empty"]),
            seed=st.integers(0, 2**16),
        )
        def stage(self, key_id, party, how, seed):
            known = party in PARTIES
            ciphertext = self.party.encrypt(party, self.values(party)) if known else b"c"
            if how != "valid":
                ciphertext = damaged(ciphertext, how, random.Random(seed))
            url = f"{self.server.url}/fhe/keys/{requests.utils.quote(key_id, safe='')}/inputs/{party}"
            response = no_server_error(requests.put(url, data=ciphertext))
            if key_id in self.intact and how == "valid" and known and not self.refits:
                assert response.status_code == 201, response.text

        @rule(
            key_id=st.one_of(keys, keys, st.text(max_size=30)),
            sent=st.sets(st.sampled_from(PARTIES)),
            version=st.sampled_from(["served", "none", "bogus"]),
        )
        def predict(self, key_id, sent, version):
            info = self.party.info(refresh=True)
            fields = {"key_id": (None, key_id)}
            if version != "none":
                fields["model_version"] = (None, info.model_version if version == "served" else "v0")
            for party in sent:
                fields[party] = (
                    party,
                    self.party.encrypt(party, self.values(party)),
                    "application/octet-stream",
                )
            response = no_server_error(requests.post(self.server.url + "/predict", files=fields))
            if response.status_code == 201 and key_id in self.intact and len(sent) == len(PARTIES):
                label, _ = self.party.decrypt(response.content)
                assert label == self.expected_label()

        @rule()
        def well_formed_score(self):
            self.party.info(refresh=True)
            label, _ = self.party.score({p: self.values(p) for p in PARTIES})
            assert label == self.expected_label()

        @precondition(lambda self: self.refits < 1)
        @rule()
        def refit(self):
            self.refits += 1
            assert no_server_error(requests.post(self.server.url + "/fit", timeout=300)).status_code == 201

        @rule(how=st.sampled_from(["truncate", "flip", "random", "empty"]), seed=st.integers(0, 2**16))
        def plaintext_garbage(self, how, seed):
            body = utils.named_ndarrays_to_bytes({"X": random_rows(3, seed=62)})
            body = damaged(body, how, random.Random(seed))
            no_server_error(requests.post(self.server.url + "/predict", data=body))

        @invariant()
        def alive(self):
            assert requests.get(self.server.url + "/").status_code == 200

    run_state_machine_as_test(
        Protocol,
        settings=settings(
            max_examples=8,
            stateful_step_count=12,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        ),
    )
