"""`make container-test`: build the image and run it the way AnoMed's template compose file wires a
submission — one bridge network with an AnoMed mock, a challenge (our stub), our anonymizer and a
deanonymizer attacking it through ATTACK_TARGET_HOST — then check what the platform relies on, that
everything in our container runs as the unprivileged user, and the optional TLS listener.

Needs root and podman (installed with the base image by ../shared/container/make-python-base).
Prints one line per step and a JSON summary; exits non-zero on the first failed check.
"""

import datetime
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anomed_utils as utils
import numpy as np
import requests
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from anonymizer.party import PartyClient
from devtools.launch import ROOT, free_port

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
IMAGE = os.environ.get("IMAGE", "fhe-anonymizer")
ATTACKER_IMAGE = "fhe-anonymizer-test-deanonymizer"
BASE_SCRIPT = ROOT.parent / "shared" / "container" / "make-python-base"
STUB_ROWS = os.environ.get("CONTAINER_TEST_STUB_ROWS", "3000")
USER_ID = 10001  # the image's user (Dockerfile)

# run inside the container with `python -c` (the image has no ps): every process's name and uids
PROCESSES = """
import glob, json
found = []
for path in glob.glob("/proc/[0-9]*/status"):
    try:
        fields = dict(line.split(":", 1) for line in open(path))
    except OSError:
        continue  # ended meanwhile
    found.append([fields["Name"].strip(), sorted({int(uid) for uid in fields["Uid"].split()})])
print(json.dumps(found))
"""
# the owners of everything under /persistent_data, and how many files it holds
VOLUME_OWNERS = """
import json, os
owners, files = set(), 0
for root, _, names in os.walk("/persistent_data"):
    owners.add(os.lstat(root).st_uid)
    for name in names:
        owners.add(os.lstat(os.path.join(root, name)).st_uid)
        files += 1
print(json.dumps({"owners": sorted(owners), "files": files}))
"""
# the TCP ports listening inside the container
LISTENING = """
ports = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in list(open(table))[1:]:
        fields = line.split()
        if fields[3] == "0A":
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
print(sorted(ports))
"""


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


def wait_for(url: str, container: str, seconds: float = 180, verify: bool | str = True) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            # nginx answers 502 until gunicorn is up; a redirect (TLS_REDIRECT_HTTP) is an answer
            response = requests.get(url, timeout=3, verify=verify, allow_redirects=False)
            if response.status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    logs = subprocess.run([*PODMAN, "logs", "--tail", "30", container], capture_output=True, text=True)
    sys.exit(f"FAILED: {container} ({url}) did not answer within {seconds} s:\n{logs.stdout}{logs.stderr}")


class Deployment:
    """The four containers on one network (and two more runs of our image with TLS); names double as
    host names, as in AnoMed."""

    ROLES = ("anomed", "challenge", "anonymizer", "deanonymizer")

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.network = f"anomed-test-{tag}"
        self.volume = f"anonymizer-data-{tag}"
        # tls and redirect: two more runs of our image, with a certificate mounted
        self.names = {role: f"{role}-{tag}" for role in (*self.ROLES, "tls", "redirect")}
        self.ports = {role: free_port() for role in self.names}
        self.tls_ports = {role: free_port() for role in ("tls", "redirect")}
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
        gunicorn = "gunicorn --bind 0.0.0.0:80 --workers 1 --threads 4 --no-control-socket".split()
        # the mock and the stub run gunicorn from our image directly on port 80, as its user
        low_ports = ("--sysctl", "net.ipv4.ip_unprivileged_port_start=0")
        self.run(
            "anomed",
            IMAGE,
            {},
            *gunicorn,
            "--chdir",
            "/mock",
            "anomed_mock:application",
            volume=f"{ROOT / 'docker' / 'anomed-mock'}:/mock:ro",
            options=low_ports,
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
            options=low_ports,
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
        for role in self.ROLES:
            wait_for(self.url(role) + "/", self.names[role])

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
            podman("rm", "-f", "-v", "-t", "0", name, check=False)  # -v: their anonymous volumes
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
    info = party.info().to_document()
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
    check_unprivileged(deployment.names["anonymizer"])

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
    key_configured = status["model_key_set"] and "model_key" not in status  # whether, not where
    check(
        key_configured is True
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


def container_python(container: str, code: str):
    return json.loads(podman("exec", container, "python", "-c", code))


def check_unprivileged(container: str) -> None:
    """Every process of the container, and what it wrote to the volume, belongs to the image's user."""
    step("everything in the anonymizer runs as its unprivileged user")
    check(podman("exec", container, "id", "-u") == str(USER_ID), f"podman exec runs as uid {USER_ID}, not 0")
    processes = container_python(container, PROCESSES)
    names = [name for name, _ in processes]
    seen = sorted({f"{name}={'/'.join(map(str, uids))}" for name, uids in processes})
    check(
        all(uids == [USER_ID] for _, uids in processes)
        and {"dumb-init", "gunicorn"} <= set(names)
        and names.count("nginx") >= 2,
        f"dumb-init, nginx (master and workers), gunicorn and the executors all run as uid {USER_ID} "
        f"(real, effective, saved, fs): {seen}",
    )
    volume = container_python(container, VOLUME_OWNERS)
    check(
        volume["owners"] == [USER_ID] and volume["files"] > 0,
        f"the fit wrote {volume['files']} files to /persistent_data, all owned by uid {USER_ID}",
    )
    check(443 not in container_python(container, LISTENING), "no certificate mounted: nothing listens on 443")


def check_unwritable_volume() -> None:
    """A root-owned bind mount on /persistent_data stops the container at once, saying what to do."""
    step("a root-owned bind mount on /persistent_data")
    directory = Path(tempfile.mkdtemp())
    directory.chmod(0o755)
    try:
        result = subprocess.run(
            [*PODMAN, "run", "--rm", *ULIMITS, "-v", f"{directory}:/persistent_data", IMAGE],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(directory)
    check(
        result.returncode != 0 and "not writable by uid" in result.stderr and "chown" in result.stderr,
        f"the container exits ({result.returncode}) naming the problem: {result.stderr.strip()[:110]}…",
    )


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key, the key readable only by the image's user."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    os.chown(key_path, USER_ID, USER_ID)  # rootful podman: the container's uid is the host's
    return cert_path, key_path


def tls_handshake(port: int, cafile: Path, ciphers: str | None = None) -> str | None:
    """The negotiated protocol version, or None if the handshake fails (ciphers: TLS 1.2 only)."""
    context = ssl.create_default_context(cafile=str(cafile))
    if ciphers:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as connection:
                return connection.version()
    except ssl.SSLError:
        return None


def check_tls(deployment: Deployment, summary: dict) -> None:
    """Our image with a certificate mounted serves HTTPS on 443 and still plain HTTP on 80."""
    step("the optional TLS listener (a self-signed certificate mounted at /run/secrets/tls.{crt,key})")
    cert, key = self_signed_certificate(Path(tempfile.mkdtemp()))
    mounts = ("-v", f"{cert}:/run/secrets/tls.crt:ro", "-v", f"{key}:/run/secrets/tls.key:ro")
    for role, env in (("tls", {}), ("redirect", {"TLS_REDIRECT_HTTP": "1"})):
        tls_port = ("-p", f"127.0.0.1:{deployment.tls_ports[role]}:443")
        deployment.run(
            role,
            IMAGE,
            {"CHALLENGE_HOST": deployment.names["challenge"], **env},
            options=(*mounts, *tls_port),
        )
    https = f"https://127.0.0.1:{deployment.tls_ports['tls']}/"
    wait_for(deployment.url("tls") + "/", deployment.names["tls"])
    status = requests.get(https, verify=str(cert), timeout=30)
    check(
        status.status_code == 200 and status.json()["message"].endswith("alive!"),
        "HTTPS / answers 200, verified",
    )
    check(
        requests.get(deployment.url("tls") + "/", timeout=30).status_code == 200,
        "plain HTTP on 80 still answers",
    )
    summary["tls_version"] = tls_handshake(deployment.tls_ports["tls"], cert)
    check(summary["tls_version"] in ("TLSv1.2", "TLSv1.3"), f"negotiates {summary['tls_version']}")
    weak = tls_handshake(deployment.tls_ports["tls"], cert, ciphers="ECDHE-ECDSA-AES128-SHA")
    check(weak is None, "refuses a TLS 1.2 client offering only a CBC/SHA-1 cipher")
    generated = container_python(
        deployment.names["tls"],
        "import json, os; s = os.stat('/var/lib/anonymizer/model.key'); print(json.dumps([s.st_uid, s.st_mode & 0o777]))",
    )
    check(
        generated == [USER_ID, 0o600],
        "without a mounted model key, the generated one belongs to the user (0600)",
    )

    wait_for(deployment.url("redirect") + "/", deployment.names["redirect"])
    redirect = requests.get(deployment.url("redirect") + "/fit?x=1", allow_redirects=False, timeout=30)
    check(
        redirect.status_code == 308 and redirect.headers.get("Location") == "https://127.0.0.1/fit?x=1",
        f"TLS_REDIRECT_HTTP=1: port 80 answers 308 to https ({redirect.status_code} {redirect.headers.get('Location')})",
    )
    https = f"https://127.0.0.1:{deployment.tls_ports['redirect']}/"
    wait_for(https, deployment.names["redirect"], verify=str(cert))  # gunicorn may still be starting
    check(requests.get(https, verify=str(cert), timeout=30).status_code == 200, "and HTTPS answers there")


def main() -> int:
    summary: dict = {}
    build_images(summary)
    deployment = Deployment()
    try:
        step(f"starting {', '.join(deployment.names.values())} on network {deployment.network}")
        deployment.start()
        exercise(deployment, summary)
        check_tls(deployment, summary)
        check_unwritable_volume()
    finally:
        if os.environ.get("KEEP_CONTAINERS") != "1":
            deployment.remove()
    print(json.dumps(summary, indent=2))
    print("container test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
