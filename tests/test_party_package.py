"""The party SDK as a bank installs it: `pip install '.[party]'` into a fresh venv gives a working
`anonymizer-party` CLI that imports none of the server's libraries and scores a real applicant."""

import json
import shutil
import subprocess
import sys
import sysconfig

import pytest
import requests
from helpers import plaintext_labels, random_rows

from devtools.launch import ROOT

SERVER_ONLY = (
    "sklearn",
    "falcon",
    "gunicorn",
    "anomed_utils",
    "anomed_anonymizer",
    "filelock",
    "cryptography",
)
PACKAGE_FILES = (
    "pyproject.toml",
    "README.md",
    "requirements.txt",
    "requirements-party.txt",
    "requirements-concrete-ml.txt",
    "requirements-tools.txt",
)


@pytest.fixture(scope="module")
def party_venv(tmp_path_factory):
    """A fresh venv with only the package and its party extra installed into it."""
    source, venv = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("venv") / "party"
    for name in PACKAGE_FILES:
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "anonymizer", source / "anonymizer", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # the dev venv's distributions are visible to the fresh one (a .pth line), so pip resolves the
    # extra's exact pins against them (and fails if they disagree) instead of downloading torch
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "dev-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-build-isolation",
            "--quiet",
            f"{source}[party]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def test_the_package_is_installed_in_the_fresh_venv_without_server_libraries(party_venv, tmp_path):
    probe = (
        "import json, sys, anonymizer.party.cli as cli; "
        f"print(json.dumps([cli.__file__, sorted(m for m in {SERVER_ONLY!r} if m in sys.modules)]))"
    )
    answer = subprocess.run(
        [str(party_venv / "bin" / "python"), "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr
    location, server_modules = json.loads(answer.stdout)
    assert location.startswith(str(party_venv)) and server_modules == []


def test_the_console_script_scores_an_applicant_like_plaintext_predict(
    party_venv, start_anonymizer, tmp_path
):
    server = start_anonymizer()
    assert requests.post(server.url + "/fit", timeout=300).status_code == 201
    command = [
        str(party_venv / "bin" / "anonymizer-party"),
        "--server",
        server.url,
        "--workdir",
        str(tmp_path / "party"),
    ]
    info = subprocess.run([*command, "info"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    parties = json.loads(info.stdout)["parties"]
    row = random_rows(1, seed=38)[0]
    inputs = [f"--input={party}={json.dumps(row[columns].tolist())}" for party, columns in parties.items()]
    decision = subprocess.run(
        [*command, "predict", *inputs], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert decision.returncode == 0, decision.stderr
    assert json.loads(decision.stdout)["decision"] == plaintext_labels(server, row[None])[0]
