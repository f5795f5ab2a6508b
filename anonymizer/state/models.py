"""Versioned model store under MODEL_DIR: publish atomically, every worker follows the pointer."""

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path

from .storage import StorageFull, remove, writing
from .vault import ModelKeyError, ModelKeySource, SealError

_logger = logging.getLogger(__name__)

KEEP_VERSIONS = 3
VERSION_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{12}$")


class StoreUnavailable(RuntimeError):
    """The stored state cannot be served (unreadable pointer, model or key); a refit repairs it."""


class ModelStore:
    """`versions/<id>/` holds each fitted model; the sealed `current.json` names the one served.

    Nothing read from MODEL_DIR can crash a worker: whatever is unreadable becomes a
    StoreUnavailable naming the problem, until a refit (or the right key) repairs it.
    """

    def __init__(self, root: Path, key_source: ModelKeySource, loader) -> None:
        """`loader(directory, vault)` opens one stored version (engines.registry.load_model)."""
        self.root = Path(root)
        self._loader = loader
        self.key_source = key_source
        self.versions_dir = self.root / "versions"
        self.pointer_path = self.root / "current.json"
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._served = None
        self._problem: str | None = None

    def publish(self, model, info: dict) -> str:
        """Write `model` as a new version beside the old ones, then switch the pointer to it.

        On a full disk, versions no longer served make room for one more try; if there is still
        no room, StorageFull, with the served model and its pointer untouched.
        """
        try:
            vault = self.key_source.vault()
        except ModelKeyError:
            vault = self.key_source.replace_unreadable_key()
        version = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(6)}"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        try:
            self._write_version(model, info, vault, version)
        except StorageFull:
            self._prune(keep=None, versions_kept=1)
            self._write_version(model, info, vault, version)
        self._prune(keep=version)
        return version

    def _write_version(self, model, info: dict, vault, version: str) -> None:
        staging = self.versions_dir / f".staging-{version}"
        pointer_tmp = self.root / f".current-{version}.json"
        with writing(f"model version {version}", staging, pointer_tmp):
            model.save(staging, {**info, "model_version": version}, vault)
            vault.write(pointer_tmp, json.dumps({"version": version}).encode())
        os.replace(staging, self.versions_dir / version)
        os.replace(pointer_tmp, self.pointer_path)

    def current(self):
        """The published model; None before the first fit; StoreUnavailable if it is unreadable.

        Reloaded when another process switched the pointer or the key file changed.
        """
        stamp = (_file_stamp(self.pointer_path), self.key_source.stamp())
        with self._lock:
            if stamp != self._stamp:
                self._served, self._problem = self._load(stamp[0] is not None)
                self._stamp = stamp
            if self._problem:
                raise StoreUnavailable(self._problem)
            return self._served

    def state(self) -> dict:
        """What `GET /` reports: serving / not fitted / unavailable, the version, and problems."""
        try:
            model = self.current()
        except StoreUnavailable as problem:
            return {"state": "unavailable", "model_version": None, "problems": [str(problem)]}
        if model is None:
            problems = []
            if self._stored_versions():
                problems.append("current.json is missing although model versions are stored: POST /fit.")
            return {"state": "not fitted", "model_version": None, "problems": problems}
        return {"state": "serving", "model_version": model.version, "problems": []}

    def _load(self, pointer_exists: bool):
        if not pointer_exists:
            return None, None
        try:
            version = self._read_pointer()
            if self._served is not None and self._served.version == version:
                return self._served, None
            return self._loader(self.versions_dir / version, self.key_source.vault()), None
        except ModelKeyError as error:
            return None, f"{error} Configure the right key, or refit (POST /fit) under a new one."
        except SealError as error:
            return None, f"{error} Refit (POST /fit) or restore the model directory and its key."
        except Exception as error:  # noqa: BLE001 - any unreadable stored state: report, never crash
            _logger.exception("The stored model is unreadable")
            return None, f"The stored model is unreadable ({error!r}): refit (POST /fit)."

    def _read_pointer(self) -> str:
        pointer = json.loads(self.key_source.vault().read(self.pointer_path))
        version = pointer.get("version") if isinstance(pointer, dict) else None
        if not isinstance(version, str) or not VERSION_PATTERN.match(version):
            raise SealError("current.json names no valid model version.")
        if not (self.versions_dir / version).is_dir():
            raise SealError(f"current.json names version {version}, which is not stored.")
        return version

    def _stored_versions(self) -> list[Path]:
        """Stored versions, oldest first: by the second in their name, then by when they were
        written (fits within one second share the second; their random suffixes do not order)."""
        try:
            versions = [p for p in self.versions_dir.iterdir() if VERSION_PATTERN.match(p.name)]
        except OSError:
            return []
        return sorted(versions, key=lambda path: (path.name.partition("-")[0], _written_ns(path)))

    def _prune(self, keep: str | None, versions_kept: int = KEEP_VERSIONS) -> None:
        """Remove all but the newest `versions_kept` versions; never `keep` or the one served."""
        spared = {keep, self._pointed_version()}
        for old in self._stored_versions()[:-versions_kept]:
            if old.name not in spared:
                shutil.rmtree(old, ignore_errors=True)

    def _pointed_version(self) -> str | None:
        try:
            return self._read_pointer()
        except (OSError, ValueError, ModelKeyError):  # SealError is a ValueError
            return None

    def _remove_leftovers(self) -> None:
        """Half-written versions and pointers of fits that died (a fit holds the fit lock)."""
        leftovers = [*self.versions_dir.glob(".staging-*"), *self.root.glob(".current-*.json")]
        for leftover in leftovers:
            remove(leftover)


def _written_ns(path: Path) -> int:
    """When a version directory was last written to (0 if it vanished meanwhile)."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _file_stamp(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size
