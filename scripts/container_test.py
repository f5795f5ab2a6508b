"""`make container-test`: build the image and run it the way AnoMed's template compose file wires a
submission — one bridge network with an AnoMed mock, a challenge (our stub), our anonymizer and a
deanonymizer attacking it through ATTACK_TARGET_HOST — then check what the platform relies on.

Needs root and podman (installed with the base image by ../shared/container/make-python-base).
Prints one line per step and a JSON summary; exits non-zero on the first failed check.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anomed_utils as utils
import numpy as np
import requests
from cryptography.fernet import Fernet

from anonymizer.party import PartyClient
from devtools.launch import ROOT, free_port

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
IMAGE = os.environ.get("IMAGE", "fhe-anonymizer")
ATTACKER_IMAGE = "fhe-anonymizer-test-deanonymizer"
BASE_SCRIPT = ROOT.parent / "shared" / "container" / "make-python-base"
STUB_ROWS = os.environ.get("CONTAINER_TEST_STUB_ROWS", "3000")


def podman(*args: str, check: bool = True, capture: bool = True) -> str:
    """Run podman; its stdout, or SystemExit with its stderr if it fails and `check`."""
    result = subprocess.run([*PODMAN, *args], capture_output=capture, text=True)
    if check and result.returncode != 0:
        sys.exit(f"FAILED: podman {' '.join(args[:3])} ...: {(result.stderr or '')[-2000:]}")
    return (result.stdout or "").strip()


def image_exists(image: str) -> bool:
    return subprocess.run([*PODMAN, "image", "exists", image]).returncode == 0


def step(message: str) -> None:
    print(f">> {message}", flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"FAILED: {message}")
    print(f"   ok: {message}", flush=True)


def build_images(summary: dict) -> None:
    """The base stand-in (if missing), our image and the attacker's, timed and measured."""
    if shutil.which("podman") is None or not image_exists("python:3.12-slim"):
        step("building the python:3.12-slim stand-in (../shared/container/make-python-base)")
        subprocess.run([str(BASE_SCRIPT)], check=True, stdout=subprocess.DEVNULL)
    for image, dockerfile in ((IMAGE, "Dockerfile"), (ATTACKER_IMAGE, "docker/deanonymizer/Dockerfile")):
        step(f"building {image} ({dockerfile})")
        started = time.monotonic()
        podman(
            "build",
            "--network=host",
            *ULIMITS,
            "--pull=never",
            "-t",
            image,
            "-f",
            dockerfile,
            str(ROOT),
            capture=False,
        )
        size = int(podman("image", "inspect", image, "--format", "{{.Size}}"))
        summary[image] = {"build_seconds": round(time.monotonic() - started, 1), "size_mb": round(size / 1e6)}
        print(f"   {image}: {summary[image]}", flush=True)


def wait_for(url: str, container: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=3).status_code < 500:  # nginx answers 502 until gunicorn is up
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    logs = subprocess.run([*PODMAN, "logs", "--tail", "30", container], capture_output=True, text=True)
    sys.exit(f"FAILED: {container} ({url}) did not answer within {seconds} s:\n{logs.stdout}{logs.stderr}")


class Deployment:
    """The four containers on one network; names double as host names, as in AnoMed."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.network = f"anomed-test-{tag}"
        self.volume = f"anonymizer-data-{tag}"
        self.names = {role: f"{role}-{tag}" for role in ("anomed", "challenge", "anonymizer", "deanonymizer")}
        self.ports = {role: free_port() for role in self.names}
        self.started: list[str] = []
        self.secret = Path(tempfile.mkdtemp()) / "model.key"  # the operator's secret, off the volume
        self.secret.write_bytes(Fernet.generate_key())
        self.secret.chmod(0o644)  # readable by the container's user; its directory is private

    def url(self, role: str) -> str:
        return f"http://127.0.0.1:{self.ports[role]}"

    def run(
        self,
        role: str,
        image: str,
        env: dict,
        *command: str,
        volume: str | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        args = [
            "run",
            "-d",
            "--name",
            self.names[role],
            "--network",
            self.network,
            *ULIMITS,
            "-p",
            f"127.0.0.1:{self.ports[role]}:80",
            *options,
        ]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        if volume:
            args += ["-v", volume]
        podman(*args, image, *command)
        self.started.append(self.names[role])

    def start(self) -> None:
        podman("network", "create", self.network)
        podman("volume", "create", self.volume)
        gunicorn = ["gunicorn", "--bind", "0.0.0.0:80", "--workers", "1", "--threads", "4"]
        self.run(
            "anomed",
            IMAGE,
            {},
            *gunicorn,
            "--chdir",
            "/mock",
            "anomed_mock:application",
            volume=f"{ROOT / 'docker' / 'anomed-mock'}:/mock:ro",
        )
        self.run(
            "challenge",
            IMAGE,
            {"ANOMED_HOST": self.names["anomed"], "STUB_ROWS": STUB_ROWS},
            *gunicorn,
            "--chdir",
            "/stub",
            "challenge_stub.wsgi:application",
            volume=f"{ROOT / 'challenge_stub'}:/stub/challenge_stub:ro",
        )
        self.run_anonymizer()
        self.run(
            "deanonymizer",
            ATTACKER_IMAGE,
            {
                "CHALLENGE_HOST": self.names["challenge"],
                "ATTACK_TARGET_HOST": self.names["anonymizer"],
                "ATTACK_N_FEATURES": "15",
            },
        )
        for role, name in self.names.items():
            wait_for(self.url(role) + "/", name)

    def run_anonymizer(self) -> None:
        # what AnoMed sets (the challenge's bare host name, the volume), plus the model key as a
        # secret mounted outside the volume, as README recommends for operators
        secret = ("-v", f"{self.secret}:/run/secrets/anonymizer_model_key:ro")
        self.run(
            "anonymizer",
            IMAGE,
            {"CHALLENGE_HOST": self.names["challenge"]},
            volume=f"{self.volume}:/persistent_data",
            options=secret,
        )

    def remove(self) -> None:
        for name in self.started:
            podman("rm", "-f", "-t", "0", name, check=False)
        podman("network", "rm", "-f", self.network, check=False)
        podman("volume", "rm", "-f", self.volume, check=False)


def plaintext(url: str, X: np.ndarray) -> np.ndarray:
    response = requests.post(url + "/predict", data=utils.named_ndarrays_to_bytes({"X": X}), timeout=60)
    assert response.status_code == 201, response.text
    return utils.bytes_to_named_ndarrays(response.content)["prediction"]


def exercise(deployment: Deployment, summary: dict) -> None:
    anonymizer = deployment.url("anonymizer")
    step("POST /fit on the anonymizer (through nginx on port 80)")
    started = time.monotonic()
    fit = requests.post(anonymizer + "/fit", timeout=1800)
    check(fit.status_code == 201, f"/fit 201 ({fit.status_code}: {fit.text[:300]})")
    model = fit.json()["model"]
    summary["fit_seconds"] = round(time.monotonic() - started, 1)
    summary["model"] = {k: model[k] for k in ("model_version", "hyperparameters", "pbs_count", "parties")}
    for split in ("tuning", "validation"):
        evaluation = requests.post(anonymizer + "/evaluate", params={"data_split": split}, timeout=600)
        check(evaluation.status_code == 201, f"/evaluate {split} 201: {evaluation.text[:200]}")
        summary[f"{split}_accuracy"] = evaluation.json()["evaluation"]["accuracy"]

    step("the deanonymizer attacks http://$ATTACK_TARGET_HOST/predict")
    attacker = deployment.url("deanonymizer")
    fit = requests.post(attacker + "/fit", timeout=1800)
    check(fit.status_code == 201, f"deanonymizer /fit 201 ({fit.status_code}: {fit.text[:300]})")
    for split in ("tuning", "validation"):
        evaluation = requests.post(attacker + "/evaluate", params={"data_split": split}, timeout=900)
        check(evaluation.status_code == 201, f"deanonymizer /evaluate {split} 201: {evaluation.text[:300]}")
        summary[f"attack_{split}"] = evaluation.json().get("evaluation")
    received = requests.get(deployment.url("anomed") + "/submissions", timeout=30).json()
    check(
        len(received["anonymizer"]) == 2 and len(received["deanonymizer"]) == 2,
        "the challenge submitted all four evaluations to the AnoMed mock",
    )

    step("an encrypted prediction from the host through the published port")
    workdir = Path(tempfile.mkdtemp())
    party = PartyClient(anonymizer, workdir, log=lambda m: None)
    info = party.info()
    tuning = requests.get(deployment.url("challenge") + "/data/anonymizer/tuning", timeout=30)
    X = utils.bytes_to_named_ndarrays(tuning.content)["X"][:3]
    started = time.monotonic()
    decisions = [
        party.score({name: row[columns].tolist() for name, columns in info["parties"].items()})[0]
        for row in X
    ]
    summary["encrypted_seconds_per_decision_incl_keygen"] = round((time.monotonic() - started) / len(X), 2)
    check(
        decisions == plaintext(anonymizer, X).tolist(),
        f"encrypted decisions {decisions} equal plaintext /predict",
    )
    key_id = party.key_id()

    step("podman stop ends the anonymizer quickly (dumb-init forwards SIGTERM)")
    started = time.monotonic()
    podman("stop", deployment.names["anonymizer"])
    summary["stop_seconds"] = round(time.monotonic() - started, 2)
    check(summary["stop_seconds"] < 5, f"stopped in {summary['stop_seconds']} s")
    podman("rm", deployment.names["anonymizer"])
    deployment.started.remove(deployment.names["anonymizer"])

    step("a new container on the same volume")
    deployment.run_anonymizer()
    wait_for(anonymizer + "/", deployment.names["anonymizer"])
    status = requests.get(anonymizer + "/", timeout=30).json()
    check(status["model_version"] == model["model_version"], "serves the same model version")
    check(
        status["model_key"] == "/run/secrets/anonymizer_model_key"
        and "model.key"
        not in podman("exec", deployment.names["anonymizer"], "ls", "/persistent_data/models"),
        "sealed under the mounted secret; no key in the volume",
    )
    party_name = next(iter(info["parties"]))
    ciphertext = party.encrypt(party_name, X[0][info["parties"][party_name]].tolist())
    staged = requests.put(f"{anonymizer}/fhe/keys/{key_id}/inputs/{party_name}", data=ciphertext, timeout=60)
    check(staged.status_code == 201, f"still knows the uploaded key ({staged.status_code})")
    result = requests.post(anonymizer + "/predict", files={"key_id": (None, key_id)}, timeout=600)
    check(
        result.status_code == 201 and party.decrypt(result.content)[0] == decisions[0],
        "and answers an encrypted prediction with it",
    )


def main() -> int:
    summary: dict = {}
    build_images(summary)
    deployment = Deployment()
    try:
        step(f"starting {', '.join(deployment.names.values())} on network {deployment.network}")
        deployment.start()
        exercise(deployment, summary)
    finally:
        if os.environ.get("KEEP_CONTAINERS") != "1":
            deployment.remove()
    print(json.dumps(summary, indent=2))
    print("container test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
