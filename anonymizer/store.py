"""Versioned model store under MODEL_DIR: publish atomically, every worker follows the pointer."""

import json
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

from .engines import load_model
from .vault import Vault

KEEP_VERSIONS = 3


class ModelStore:
    """`versions/<id>/` holds each fitted model; `current.json` names the one being served."""

    def __init__(self, root: Path, vault: Vault) -> None:
        self.root = Path(root)
        self.vault = vault
        self.versions_dir = self.root / "versions"
        self.pointer_path = self.root / "current.json"
        self._lock = threading.Lock()
        self._pointer_stamp: tuple | None = None
        self._served = None

    def publish(self, tree, info: dict) -> str:
        """Write `tree` as a new version beside the old ones, then switch the pointer to it."""
        version = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(6)}"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = self.versions_dir / f".staging-{version}"
        tree.save(staging, {**info, "model_version": version}, self.vault)
        os.replace(staging, self.versions_dir / version)
        pointer_tmp = self.root / f".current-{version}.json"
        pointer_tmp.write_text(json.dumps({"version": version}))
        os.replace(pointer_tmp, self.pointer_path)
        self._prune(keep=version)
        return version

    def current(self):
        """The published model, reloaded when another process switched the pointer."""
        try:
            stat = self.pointer_path.stat()
        except FileNotFoundError:
            return None
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._pointer_stamp:
                version = json.loads(self.pointer_path.read_text())["version"]
                if self._served is None or self._served.version != version:
                    self._served = load_model(self.versions_dir / version, self.vault)
                self._pointer_stamp = stamp
            return self._served

    def _prune(self, keep: str) -> None:
        versions = sorted(p for p in self.versions_dir.iterdir() if not p.name.startswith("."))
        for old in versions[:-KEEP_VERSIONS]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)
