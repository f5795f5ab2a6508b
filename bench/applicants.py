"""`python -m bench.applicants`: new applicants one after another on one fitted server, each with
a fresh key (keygen, upload, every party's encryption in this one process, the first decision,
decryption), then 20 warm decisions each: how a first key per executor after a fit compares
with later ones. ANONYMIZER_ENCRYPTION (default paillier) and APPLICANTS (default 3) choose;
the additive model is bench/run.py's C 0.03 5-bit one. Prints one JSON line per applicant."""

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import requests

from anonymizer.party import PartyClient
from challenge_stub.dataset import FEATURE_NAMES, PARTY_LAYOUT, make_credit_data
from devtools.launch import GunicornServer

ADDITIVE = {"TREE_SELECTION": "off", "TREE_ADDITIVE": "1", "TREE_N_BITS": "4", "ADDITIVE_C": "0.03"}


def applicant(server_url: str, workdir: Path, rows) -> dict:
    party = PartyClient(server_url, workdir, log=lambda message: None)
    times = {}
    started = time.perf_counter()
    party.keygen()
    times["keygen"] = time.perf_counter() - started
    started = time.perf_counter()
    party.key_id()
    times["upload"] = time.perf_counter() - started
    parties = party.info().parties
    started = time.perf_counter()
    ciphertexts = {name: party.encrypt(name, rows[0][columns].tolist()) for name, columns in parties.items()}
    times["encrypt_every_party"] = time.perf_counter() - started
    started = time.perf_counter()
    result, _ = party.predict(ciphertexts)
    times["first_decision"] = time.perf_counter() - started
    started = time.perf_counter()
    party.decrypt(result)
    times["decrypt"] = time.perf_counter() - started
    latencies, server_seconds = [], []
    for row in rows[1:]:
        ciphertexts = {name: party.encrypt(name, row[columns].tolist()) for name, columns in parties.items()}
        started = time.perf_counter()
        result, seconds = party.predict(ciphertexts)
        latencies.append(time.perf_counter() - started)
        server_seconds.append(seconds)
        party.decrypt(result)
    return {
        **{k: round(v, 3) for k, v in times.items()},
        "new_applicant": round(sum(times.values()), 3),
        "warm_p50": round(statistics.median(latencies), 4),
        # None where the server sends no time (Paillier)
        "server_p50": round(statistics.median(server_seconds), 4)
        if server_seconds[0] == server_seconds[0]
        else None,
    }


def main() -> None:
    encryption = os.environ.get("ANONYMIZER_ENCRYPTION", "paillier")
    layout = {"ANONYMIZER_PARTIES": json.dumps(PARTY_LAYOUT), "FEATURE_NAMES": json.dumps(FEATURE_NAMES)}
    with (
        tempfile.TemporaryDirectory() as tmp,
        GunicornServer("challenge_stub.wsgi:application", env={"STUB_ROWS": "10000"}, workers=1) as stub,
    ):
        env = {**layout, **ADDITIVE, "ANONYMIZER_ENCRYPTION": encryption}
        env.update(CHALLENGE_HOST=stub.host, MODEL_DIR=str(Path(tmp) / "model"))
        with GunicornServer("app:application", env=env) as server:
            requests.post(server.url + "/fit", timeout=900).raise_for_status()
            rows = make_credit_data(21, seed=404)[0]
            for index in range(int(os.environ.get("APPLICANTS", "3"))):
                answer = applicant(server.url, Path(tmp) / f"applicant-{index}", rows)
                print(json.dumps({"encryption": encryption, "applicant": index, **answer}), flush=True)


if __name__ == "__main__":
    main()
