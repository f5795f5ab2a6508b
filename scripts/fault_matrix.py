"""Damage each file under MODEL_DIR as an operator might, restart, and print every route's status.

For each fault: a fresh copy of one fitted MODEL_DIR, the file corrupted, truncated or deleted,
gunicorn (2 workers) started on it, each route probed, then `POST /fit` and `POST /predict` again.
It uses only what every version of this project has, so it can be run from an older checkout too:

    cd OTHER_CHECKOUT && PYTHONPATH=. /work/main/.venv/bin/python /work/main/scripts/fault_matrix.py
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import anomed_utils as utils
import requests

from challenge_stub.dataset import FEATURE_NAMES, PARTY_LAYOUT, make_credit_data
from devtools.launch import GunicornServer

ENV = {
    "ANONYMIZER_PARTIES": json.dumps(PARTY_LAYOUT),
    "FEATURE_NAMES": json.dumps(FEATURE_NAMES),
    "TREE_SELECTION": "off",
    "TREE_MAX_DEPTH": "3",
}


def version_dir(model_dir: Path) -> Path:
    return next(p for p in (model_dir / "versions").iterdir() if not p.name.startswith("."))


FILES = {
    "current.json (pointer)": lambda d: d / "current.json",
    "model.key (generated)": lambda d: d / "model.key",
    "sealed model metadata": lambda d: version_dir(d) / "meta.json.sealed",
    "circuit server.zip": lambda d: version_dir(d) / "deployment" / "server.zip",
}


def mutate(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        for i in range(len(data) // 3, len(data) // 3 + 8):
            data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def probe(url: str) -> dict[str, object]:
    body = utils.named_ndarrays_to_bytes({"X": make_credit_data(2, seed=5)[0]})
    calls = {
        "GET /": lambda: requests.get(url + "/", timeout=30),
        "POST /predict": lambda: requests.post(url + "/predict", data=body, timeout=60),
        "GET /fhe/info": lambda: requests.get(url + "/fhe/info", timeout=30),
        "POST /evaluate": lambda: requests.post(url + "/evaluate?data_split=tuning", timeout=60),
    }
    statuses = {}
    for name, call in calls.items():
        try:
            statuses[name] = call().status_code
        except requests.RequestException as error:
            statuses[name] = f"no answer ({type(error).__name__})"
    return statuses


def run_fault(template: Path, stub: GunicornServer, work: Path, kind: str, how: str) -> dict:
    model_dir = work / f"{kind.split()[0]}-{how}"
    shutil.copytree(template, model_dir)
    mutate(FILES[kind](model_dir), how)
    env = {**ENV, "CHALLENGE_HOST": stub.host, "MODEL_DIR": str(model_dir)}
    server = GunicornServer("app:application", env=env)
    try:
        server.start(wait_seconds=45)
    except RuntimeError as error:
        return {"after restart": f"no worker answered: {error}"}
    try:
        after_restart = probe(server.url)
        fit = requests.post(server.url + "/fit", timeout=600).status_code
        return {"after restart": after_restart, "POST /fit": fit, "after fit": probe(server.url)}
    finally:
        server.stop()


def main() -> None:
    results = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        GunicornServer("challenge_stub.wsgi:application", env={"STUB_ROWS": "3000"}, workers=1) as stub,
    ):
        template = Path(tmp) / "template"
        with GunicornServer(
            "app:application", env={**ENV, "CHALLENGE_HOST": stub.host, "MODEL_DIR": str(template)}
        ) as server:
            assert requests.post(server.url + "/fit", timeout=600).status_code == 201
        for kind in FILES:
            for how in ("corrupt", "truncate", "delete"):
                results[f"{kind}: {how}"] = outcome = run_fault(template, stub, Path(tmp), kind, how)
                print(f"{kind}: {how} -> {json.dumps(outcome)}", flush=True)
    json.dump(results, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
