"""Embedded executors with real FHE: bounded admission (201 or 429, nothing lost), an executor killed
mid-service is restarted and reloads keys and staged inputs from the store, garbage on an
executor's socket (or a preload request) does not kill it, and plaintext /predict keeps answering while the queue is full."""

import dataclasses
import os
import signal
import threading
import time
from collections import Counter
from multiprocessing.connection import Client

import requests
from helpers import CREDIT_ENV, multipart, plaintext_labels, post_npz, quiet_party, random_rows
from inprocess import InProcessServer, config_for

from anonymizer.engines.base import DECIDE
from anonymizer.execution.base import Job
from anonymizer.execution.embedded import EmbeddedExecutors, embedded_settings
from anonymizer.execution.pool import ExecutorPool
from anonymizer.party import PartyClient
from anonymizer.settings import Execution
from devtools.launch import GunicornServer


def encrypted_form(party: PartyClient, ciphertexts: dict) -> dict:
    return multipart(party.key_id(), party.version, **ciphertexts)


def all_ciphertexts(party: PartyClient, row) -> dict:
    return {
        name: party.encrypt(name, row[columns].tolist()) for name, columns in party.info().parties.items()
    }


def test_a_full_queue_answers_429_and_loses_no_staged_input(model_dir, stub, tmp_path):
    config = dataclasses.replace(config_for(model_dir, stub), execution=Execution(executors=1, max_queued=0))
    with InProcessServer(config) as server:
        flooder = quiet_party(server.url, tmp_path / "flooder")
        stager = quiet_party(server.url, tmp_path / "stager")
        rows = random_rows(2, seed=81)
        labels = plaintext_labels(server, rows)
        flood_form = encrypted_form(flooder, all_ciphertexts(flooder, rows[0]))
        stager.key_id()
        parties = stager.info().parties
        mine = {"applicant": stager.encrypt("applicant", rows[1][parties["applicant"]].tolist())}

        statuses, retry_afters, wrong, stop = Counter(), [], [], threading.Event()

        def flood() -> None:
            while not stop.is_set():
                response = requests.post(server.url + "/predict", files=flood_form, timeout=120)
                statuses[response.status_code] += 1
                if response.status_code == 429:
                    retry_afters.append(response.headers.get("Retry-After"))
                elif response.status_code != 201 or flooder.decrypt(response.content)[0] != labels[0]:
                    wrong.append(response.status_code)

        def stage_the_others() -> None:
            for name in [p for p in parties if p != "applicant"]:
                stager.stage(name, stager.encrypt(name, rows[1][parties[name]].tolist()))

        stage_the_others()
        threads = [threading.Thread(target=flood) for _ in range(6)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            plaintext = post_npz(server, rows)
            assert plaintext.status_code == 201  # the attackers' route answers while the queue is full
            # try while the flooders hold the one slot until a try is refused; a try that wins the
            # slot now and then is a right decision, and its consumed parts are staged again
            refused = False
            for _ in range(200):
                response = requests.post(server.url + "/predict", files=encrypted_form(stager, mine))
                if response.status_code == 429:
                    refused = True
                    break
                assert response.status_code == 201, response.text
                assert stager.decrypt(response.content)[0] == labels[1]
                stage_the_others()
            assert refused
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        # the flood is over and the slot free: the refused try's staged parts are still there
        response = requests.post(server.url + "/predict", files=encrypted_form(stager, mine))
        assert response.status_code == 201, response.text
        assert stager.decrypt(response.content)[0] == labels[1]
        assert set(statuses) <= {201, 429} and statuses[201] and statuses[429] and not wrong, statuses
        assert all(value and int(value) >= 1 for value in retry_afters)


def test_killed_executors_restart_and_reload_keys_and_staged_inputs(model_dir, stub, tmp_path):
    env = {**CREDIT_ENV, "CHALLENGE_HOST": stub.host, "MODEL_DIR": str(model_dir)}
    with GunicornServer("app:application", env=env, log_path=tmp_path / "gunicorn.log") as server:
        party = quiet_party(server.url, tmp_path / "party")
        rows = random_rows(2, seed=82)
        labels = plaintext_labels(server, rows)
        parties = party.info().parties
        form = encrypted_form(party, all_ciphertexts(party, rows[0]))
        assert requests.post(server.url + "/predict", files=form).status_code == 201
        for name in [p for p in parties if p != "applicant"]:
            party.stage(name, party.encrypt(name, rows[1][parties[name]].tolist()))

        victims = server.executor_pids()
        assert len(victims) == 2
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        mine = {"applicant": party.encrypt("applicant", rows[1][parties["applicant"]].tolist())}
        deadline = time.monotonic() + 120
        while True:
            response = requests.post(server.url + "/predict", files=encrypted_form(party, mine))
            if response.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert response.status_code == 201, response.text
        assert party.decrypt(response.content)[0] == labels[1]
        assert not set(server.executor_pids()) & set(victims)


def test_garbage_on_an_executor_socket_does_not_kill_it(model_dir, stub, tmp_path):
    config = config_for(model_dir, stub)
    with InProcessServer(config) as server:
        party = quiet_party(server.url, tmp_path / "party")
        row = random_rows(1, seed=83)
        label = plaintext_labels(server, row)[0]
        ciphertexts = all_ciphertexts(party, row[0])
        key_id = party.key_id()
    pool = ExecutorPool(embedded_settings(config), 1)
    executors = EmbeddedExecutors(pool.start(), job_timeout=60)
    try:
        executors.warm(key_id)
        for frames in (
            [b"not json"],
            [b"5"],
            [b'{"op": "run"}'],
            [b'{"op": "run", "key_id": 5, "parts": 9}'],
            [b'{"op": "run", "key_id": "x", "model_version": "y", "parts": 1}', b"junk"],
            [b'{"op": "preload"}'],
        ):
            with Client(pool.addresses[0], family="AF_UNIX") as connection:
                for frame in frames:
                    connection.send_bytes(frame)
        executors.preload()  # what /fit asks of every executor: answered, and it still decides
        names = list(party.info().parties)
        job = Job(key_id, party.claim, [ciphertexts[name] for name in names], DECIDE)
        result = executors.run(job)
        assert party.decrypt(result)[0] == label
    finally:
        pool.stop()
