"""`make run`: start the challenge stub and the anonymizer under gunicorn, fit, evaluate, show the
encrypted multi-party flow (keys, each party encrypting its own columns, an encrypted decision,
its reason codes where the model gives them, one `explain`), keep serving.

Environment: PORT (anonymizer, default 8000), STUB_PORT (default 8001), MODEL_DIR (default
./model_store), CHALLENGE_HOST (set it to use another challenge instead of the local stub), plus
every variable the anonymizer reads (see README).
"""

import json
import os
import signal
import socket
import sys
import threading
import time

import anomed_utils as utils
import numpy as np
import requests

from anonymizer.party import PartyClient
from devtools.launch import ROOT, GunicornServer, free_port


def shape_text(model: dict) -> str:
    """`5 trees, depth 2, 20 leaves` for trees; `one 6-bit score per class (C 0.003)` for additive."""
    hyper = model["hyperparameters"]
    if hyper.get("model") == "additive":
        kind = "linear" if hyper.get("linear") else "binned"
        return f"{kind} points, {model['score_outputs']} {hyper['score_bits']}-bit score(s) (C {hyper['regularization']:g})"
    trees = hyper.get("n_estimators", 1)
    trees = f"{trees} trees, " if trees > 1 else ""
    return f"{trees}depth {model['tree_depth']}, {model['tree_leaves']} leaves"


def port_or_free(preferred: int) -> int:
    """`preferred` if it can be bound on 127.0.0.1, else an ephemeral port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            port = free_port()
            print(f"   port {preferred} is busy, using {port}")
            return port


def call_with_progress(label: str, method: str, url: str, **kwargs) -> requests.Response:
    """Make an HTTP call, printing elapsed time every few seconds while it runs."""
    result: dict = {}

    def call() -> None:
        try:
            result["response"] = requests.request(method, url, timeout=1800, **kwargs)
        except requests.RequestException as error:
            result["error"] = error

    started = time.monotonic()
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=5)
        if worker.is_alive():
            print(f"   ... {label}: {time.monotonic() - started:.0f} s", flush=True)
    if "error" in result:
        sys.exit(f"error: {label} failed: {result['error']}")
    response = result["response"]
    print(f">> {label}: HTTP {response.status_code} in {time.monotonic() - started:.1f} s")
    return response


def layout_env(challenge_host: str) -> dict:
    """The challenge's party layout and names (our stub's /info), unless configured already."""
    if os.environ.get("ANONYMIZER_PARTIES"):
        return {}
    try:
        info = requests.get(f"http://{challenge_host}/info", timeout=10).json()
    except (requests.RequestException, ValueError):
        return {}
    if not info.get("parties"):
        return {}
    return {
        "ANONYMIZER_PARTIES": json.dumps(info["parties"]),
        "FEATURE_NAMES": json.dumps(info["feature_names"]),
    }


def timed(label: str, action):
    """Run `action()`, print how long it took; a progress line every 5 s while it runs."""
    started = time.monotonic()
    done = threading.Event()

    def progress() -> None:
        while not done.wait(5):
            print(f"   ... {label}: {time.monotonic() - started:.0f} s", flush=True)

    threading.Thread(target=progress, daemon=True).start()
    try:
        result = action()
    finally:
        done.set()
    print(f"   {label}: {time.monotonic() - started:.2f} s", flush=True)
    return result


def encrypted_flow(server_url: str, challenge_url: str) -> None:
    """Each party encrypts only its own columns of one tuning applicant; the server decides."""
    print(">> encrypted decision (the parties share the secret key; the server gets the evaluation key)")
    started = time.monotonic()
    keys_dir = ROOT / "logs" / "party-keys"
    parties = {}
    info = PartyClient(server_url, ROOT / "logs" / "party", keys_dir, log=lambda m: None).info().to_document()
    for name in info["parties"]:
        parties[name] = PartyClient(server_url, ROOT / "logs" / f"party-{name}", keys_dir, log=lambda m: None)
    first = next(iter(parties.values()))
    timed("keygen (client side, once per keys digest)", first.keygen)
    key_id = timed("evaluation key upload", first.key_id)
    print(f"   key id {key_id}; evaluation key {len(first.codec().evaluation_keys()) / 1e6:.1f} MB")
    X = utils.bytes_to_named_ndarrays(
        requests.get(challenge_url + "/data/anonymizer/tuning", timeout=30).content
    )["X"]
    row = X[0]
    values = {name: row[columns].tolist() for name, columns in info["parties"].items()}
    ciphertexts = {}
    for name, client in parties.items():
        ciphertexts[name] = timed(
            f"{name} encrypts its {len(values[name])} column(s)",
            lambda client=client, name=name: client.encrypt(name, values[name]),
        )
        print(f"   {name}: {len(ciphertexts[name])} bytes of ciphertext")
    names = list(parties)
    for name in names[1:]:
        timed(f"{name} stages its ciphertext", lambda name=name: parties[name].stage(name, ciphertexts[name]))
    result, fhe_seconds = timed(
        f"{names[0]} asks for the decision (server computes on ciphertexts)",
        lambda: first.predict({names[0]: ciphertexts[names[0]]}),
    )
    label, share = first.decrypt(result)
    plain = utils.bytes_to_named_ndarrays(
        requests.post(
            server_url + "/predict", data=utils.named_ndarrays_to_bytes({"X": row[None]}), timeout=60
        ).content
    )["prediction"][0]
    print(
        f"   decision {label} (its vote share or probability {share:.2f}); server FHE time "
        f"{fhe_seconds:.3f} s; plaintext /predict says {plain}; end to end {time.monotonic() - started:.1f} s"
    )
    explain_one(first, X, info)


def explain_one(party: PartyClient, X: np.ndarray, info: dict) -> None:
    """One `explain` answer: the smallest change of the last party's first feature to approval."""
    name, columns = list(info["parties"].items())[-1]
    feature = (info.get("feature_names") or [str(c) for c in range(info["n_features"])])[columns[0]]
    sample = X[:50]
    labels = utils.bytes_to_named_ndarrays(
        requests.post(
            party.server_url + "/predict", data=utils.named_ndarrays_to_bytes({"X": sample}), timeout=60
        ).content
    )["prediction"]
    denied = sample[labels == info["classes"][0]]
    if not len(denied):
        return
    row = denied[0]
    values = {p: row[c].tolist() for p, c in info["parties"].items()}
    if party.gives_reasons:  # two-class additive models: the columns it lost points on, encrypted
        print(">> reasons: the top columns a denied applicant lost points on (one encrypted prediction)")
        answer = timed("reasons", lambda: party.reasons(values))
        print(f"   {json.dumps(answer)}")
        print(">> explain: which value of the top reason's feature would turn it into approval?")
        answer = timed(
            "explain (first decision, then every level of the feature in one batched call where served)",
            lambda: party.explain(values),
        )
    else:
        print(f">> explain: which {feature} ({name}) would turn a denied applicant into approval?")
        answer = timed(
            "explain (first decision, then every level of the feature in one batched call where served)",
            lambda: party.explain(values, name, feature),
        )
    print(f"   {json.dumps(answer)}")


def print_console_help(url: str) -> None:
    """How to try the served model in a browser: one console per party, sharing a keys dir."""
    parties = requests.get(url + "/fhe/info", timeout=30).json()["parties"]
    print(">> party consoles (each in its own terminal; each prints the page to open in a browser):")
    for party in parties:
        print(
            f"   .venv/bin/python -m anonymizer.party --server {url} --workdir ~/.anomed-{party} "
            f"--keys-dir ~/.anomed-shared-keys console --party {party}"
        )


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # the servers run in their own sessions: turn SIGTERM into the Ctrl-C path that stops them
    signal.signal(signal.SIGTERM, _interrupt)
    logs = ROOT / "logs"
    logs.mkdir(exist_ok=True)
    servers = []
    challenge_host = os.environ.get("CHALLENGE_HOST")
    try:
        if not challenge_host:
            print(">> starting the challenge stub (synthetic credit-card data) ...")
            stub = GunicornServer(
                "challenge_stub.wsgi:application",
                port=port_or_free(int(os.environ.get("STUB_PORT", "8001"))),
                workers=1,
                log_path=logs / "stub.log",
            ).start()
            servers.append(stub)
            challenge_host = stub.host
            print(
                f"   challenge stub at {stub.url} ({json.dumps(requests.get(stub.url + '/info').json()['parties'])})"
            )
        print(">> starting the anonymizer (2 gunicorn workers) ...")
        model_dir = os.environ.get("MODEL_DIR", str(ROOT / "model_store"))
        anonymizer = GunicornServer(
            "app:application",
            env={"CHALLENGE_HOST": challenge_host, "MODEL_DIR": model_dir, **layout_env(challenge_host)},
            port=port_or_free(int(os.environ.get("PORT", "8000"))),
            log_path=logs / "anonymizer.log",
        ).start()
        servers.append(anonymizer)
        print(f"   anonymizer at {anonymizer.url}, models in {model_dir}")

        fit = call_with_progress(
            "POST /fit (train + compile the FHE circuit)", "POST", anonymizer.url + "/fit"
        )
        if fit.status_code != 201:
            sys.exit(f"error: /fit failed: {fit.text}; see logs/anonymizer.log")
        model = fit.json()["model"]
        hyper = model["hyperparameters"]
        print(
            f"   model {model['model_version']} ({model['engine']} engine): {hyper.get('model', 'tree')} "
            f"{shape_text(model)}, "
            f"{hyper['n_bits']}-bit features, {model['pbs_count']} table lookups per encrypted prediction, training "
            f"accuracy {model['training_accuracy']:.3f}, train {model['train_seconds']} s + compile "
            f"{model['compile_seconds']} s"
        )
        for split in ("tuning", "validation"):
            evaluation = call_with_progress(
                f"POST /evaluate?data_split={split}",
                "POST",
                anonymizer.url + "/evaluate",
                params={"data_split": split},
            )
            print(f"   {json.dumps(evaluation.json())}")
        encrypted_flow(anonymizer.url, f"http://{challenge_host}")
        print_console_help(anonymizer.url)
        print(f">> serving. Try: curl {anonymizer.url}/   (logs in {logs}; Ctrl-C stops)")
        while all(s.process and s.process.poll() is None for s in servers):
            time.sleep(1)
        print("error: a server exited; see logs/")
    except KeyboardInterrupt:
        print("\n>> stopping")
    finally:
        for server in reversed(servers):
            server.stop()


if __name__ == "__main__":
    main()
