"""`make run`: start the challenge stub and the anonymizer under gunicorn, fit, evaluate, keep serving.

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

import requests

from anonymizer.launch import ROOT, GunicornServer, free_port


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
            print(f"   challenge stub at {stub.url} ({json.dumps(requests.get(stub.url + '/info').json()['parties'])})")
        print(">> starting the anonymizer (2 gunicorn workers; importing concrete-ml takes a few s) ...")
        model_dir = os.environ.get("MODEL_DIR", str(ROOT / "model_store"))
        anonymizer = GunicornServer(
            "app:application",
            env={"CHALLENGE_HOST": challenge_host, "MODEL_DIR": model_dir},
            port=port_or_free(int(os.environ.get("PORT", "8000"))),
            log_path=logs / "anonymizer.log",
        ).start()
        servers.append(anonymizer)
        print(f"   anonymizer at {anonymizer.url}, models in {model_dir}")

        fit = call_with_progress("POST /fit (train + compile the FHE circuit)", "POST", anonymizer.url + "/fit")
        if fit.status_code != 201:
            sys.exit(f"error: /fit failed: {fit.text}; see logs/anonymizer.log")
        model = fit.json()["model"]
        print(
            f"   model {model['model_version']}: depth {model['tree_depth']}, "
            f"{model['tree_leaves']} leaves, {model['pbs_count']} PBS per encrypted prediction, "
            f"training accuracy {model['training_accuracy']:.3f}, "
            f"train {model['train_seconds']} s + compile {model['compile_seconds']} s"
        )
        for split in ("tuning", "validation"):
            evaluation = call_with_progress(
                f"POST /evaluate?data_split={split}",
                "POST",
                anonymizer.url + "/evaluate",
                params={"data_split": split},
            )
            print(f"   {json.dumps(evaluation.json())}")
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
