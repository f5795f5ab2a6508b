"""The party SDK as a bank installs it, one extra per scheme, each into a fresh venv:
`pip install '.[party]'` (TFHE and Paillier) gives a working `anonymizer-party` CLI that imports none
of the server's libraries and scores a real applicant; `pip install '.[party-paillier]'` installs
neither concrete nor torch, and its CLI (applicant and co-party processes) decides against a real
Paillier server."""

import importlib.metadata
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import requests
from helpers import plaintext_labels, random_rows

from challenge_stub.dataset import PARTY_LAYOUT
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
# imported only once the served scheme is TFHE (codecs.py), never by importing the CLI
TFHE_ONLY = ("concrete", "torch")
# what the Paillier extra must do without: these distributions are hidden from its venv
NOT_FOR_PAILLIER = ("concrete-python", "concrete-ml", "concrete-ml-extensions", "torch")
PACKAGE_FILES = (
    "pyproject.toml",
    "README.md",
    "requirements.txt",
    "requirements-party.txt",
    "requirements-party-tfhe.txt",
    "requirements-concrete-ml.txt",
    "requirements-tools.txt",
)
PAILLIER_ENV = {"ANONYMIZER_ENCRYPTION": "paillier", "TREE_ADDITIVE": "1", "ADDITIVE_C": "0.01"}


def dev_site_view(root: Path, hidden: tuple[str, ...]) -> Path:
    """The dev venv's site-packages as links, less every file of the `hidden` distributions."""
    site = Path(sysconfig.get_paths()["purelib"])
    if not hidden:
        return site
    left_out = set()
    for name in hidden:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        left_out |= {
            Path(f).parts[0] for f in files if not Path(f).is_absolute() and Path(f).parts[0] != ".."
        }
    view = root / "dev-site"
    view.mkdir()
    for entry in site.iterdir():
        if entry.name not in left_out:
            (view / entry.name).symlink_to(entry)
    return view


def fresh_venv(tmp_path_factory, extra: str, hidden: tuple[str, ...] = ()) -> Path:
    """A fresh venv with only the package and one extra installed into it."""
    source, venv = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("venv") / extra
    for name in PACKAGE_FILES:
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "anonymizer", source / "anonymizer", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # the dev venv's distributions (less `hidden`) are visible to the fresh one (a .pth line), so pip
    # resolves the extra's exact pins against them (and fails if they disagree or one is hidden)
    # instead of downloading torch
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    view = dev_site_view(tmp_path_factory.mktemp("view"), hidden)
    (site / "dev-venv.pth").write_text(f"{view}\n")
    install = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-build-isolation",
            "--quiet",
            f"{source}[{extra}]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def party_venv(tmp_path_factory):
    return fresh_venv(tmp_path_factory, "party")


@pytest.fixture(scope="module")
def paillier_venv(tmp_path_factory):
    return fresh_venv(tmp_path_factory, "party-paillier", hidden=NOT_FOR_PAILLIER)


def imported_on_start(venv: Path, cwd: Path, modules: tuple[str, ...]) -> tuple[str, list[str]]:
    """Where the venv's CLI module lives, and which of `modules` importing it and the console loads."""
    probe = (
        "import json, sys, anonymizer.party.cli as cli; "
        f"print(json.dumps([cli.__file__, sorted(m for m in {modules!r} if m in sys.modules)]))"
    )
    answer = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert answer.returncode == 0, answer.stderr
    return tuple(json.loads(answer.stdout))


def test_the_package_is_installed_in_the_fresh_venv_without_server_libraries(party_venv, tmp_path):
    location, loaded = imported_on_start(party_venv, tmp_path, SERVER_ONLY + TFHE_ONLY)
    assert location.startswith(str(party_venv)) and loaded == []


def run_cli(venv: Path, url: str, workdir: Path, *arguments: str, cwd: Path) -> str:
    """One `anonymizer-party` process of `venv`; its stdout (asserting success)."""
    command = [str(venv / "bin" / "anonymizer-party"), "--server", url, "--workdir", str(workdir)]
    result = subprocess.run([*command, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_console_script_scores_an_applicant_like_plaintext_predict(
    party_venv, start_anonymizer, tmp_path
):
    server = start_anonymizer()
    assert requests.post(server.url + "/fit", timeout=300).status_code == 201
    parties = json.loads(run_cli(party_venv, server.url, tmp_path / "party", "info", cwd=tmp_path))["parties"]
    row = random_rows(1, seed=38)[0]
    inputs = [f"--input={party}={json.dumps(row[columns].tolist())}" for party, columns in parties.items()]
    decision = run_cli(party_venv, server.url, tmp_path / "party", "predict", *inputs, cwd=tmp_path)
    assert json.loads(decision)["decision"] == plaintext_labels(server, row[None])[0]


def test_the_paillier_extra_installs_neither_concrete_nor_torch(paillier_venv, tmp_path):
    """pip installed it without them (they are hidden from its venv); what the extra requires, with
    what those require in turn, is exactly requirements-party.txt; the CLI and console import."""
    python = str(paillier_venv / "bin" / "python")
    probe = f"""
import importlib.metadata as m, importlib.util as u, json
from packaging.requirements import Requirement
needed, todo = set(), [("anomed-fhe-anonymizer", "party-paillier")]
while todo:
    name, extra = todo.pop()
    for requirement in map(Requirement, m.requires(name) or []):
        if requirement.marker is None or requirement.marker.evaluate({{"extra": extra or ""}}):
            key = requirement.name.lower().replace("_", "-")
            todo += [(key, e) for e in requirement.extras or [None] if (key, e) not in needed]
            needed |= {{(key, e) for e in requirement.extras or [None]}}
print(json.dumps([[n for n in {TFHE_ONLY!r} if u.find_spec(n)], sorted({{n for n, _ in needed}})]))
"""
    answer = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    importable, needed = json.loads(answer.stdout)
    pinned = [
        line.split("==")[0].lower() for line in (ROOT / "requirements-party.txt").read_text().splitlines()
    ]
    assert importable == [] and needed == sorted(name for name in pinned if name and not name.startswith("#"))
    assert not set(NOT_FOR_PAILLIER) & set(needed)
    location, loaded = imported_on_start(paillier_venv, tmp_path, SERVER_ONLY + TFHE_ONLY)
    assert location.startswith(str(paillier_venv)) and loaded == []
    console = subprocess.run(
        [python, "-c", "import anonymizer.party.console"], cwd=tmp_path, capture_output=True, text=True
    )
    assert console.returncode == 0, console.stderr


def test_the_paillier_extra_decides_with_an_applicant_and_co_parties_as_cli_processes(
    paillier_venv, paillier_template, start_anonymizer, tmp_path
):
    model_dir = tmp_path / "model"
    shutil.copytree(paillier_template, model_dir)
    server = start_anonymizer(model_dir=model_dir, **PAILLIER_ENV)
    assert requests.get(server.url + "/fhe/info", timeout=30).json()["scheme"] == "paillier"
    row = random_rows(1, seed=39)[0]
    values = {party: json.dumps(row[columns].tolist()) for party, columns in PARTY_LAYOUT.items()}
    applicant = tmp_path / "applicant"
    key_id = run_cli(paillier_venv, server.url, applicant, "upload-key", cwd=tmp_path).strip()
    fingerprint = run_cli(paillier_venv, server.url, applicant, "fingerprint", cwd=tmp_path).strip()
    for party in ("bank", "credit_bureau"):
        pinned = ("--key-id", key_id, "--fingerprint", fingerprint)
        stage = ("stage", "--party", party, "--values", values[party])
        run_cli(paillier_venv, server.url, tmp_path / party, *pinned, *stage, cwd=tmp_path)
        assert not list((tmp_path / party).rglob("paillier-private.json"))
    decision = run_cli(
        paillier_venv,
        server.url,
        applicant,
        "predict",
        f"--input=applicant={values['applicant']}",
        cwd=tmp_path,
    )
    assert json.loads(decision)["decision"] == plaintext_labels(server, row[None])[0]
