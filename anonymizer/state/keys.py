"""The evaluation-key registry under MODEL_DIR: each key owned by its uploader, within quotas.

The registry stores and evicts serialized keys; `key_cache` deserializes them (executors only) and
`staged` keeps the parties' ciphertexts inside a key's directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from ..settings import KeyQuota
from ..wire import Claim
from .storage import StorageFull, remove, writing

_logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from concrete import fhe

KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")  # secrets.token_urlsafe(16): 128 random bits


def new_key_id() -> str:
    """A fresh key id (secrets.token_urlsafe(16)) that does not start with "-", which a command
    line would read as an option (`--key-id -x…` fails in argparse; 1 id in 64 did)."""
    while (key_id := secrets.token_urlsafe(16)).startswith("-"):
        pass
    return key_id


KEY_FILE = "evaluation.keys"
META_FILE = "meta.json"
USED_FILE = "used"  # its mtime is the key's last use (least-recently-used eviction)
UNREADABLE = "The stored copy of this key is unreadable: upload it again."


class UnknownKey(KeyError):
    """No evaluation key has this id (never issued, evicted, malformed, or unreadable on disk)."""

    def __init__(self, key_id: str, reason: str = "No evaluation key has this id.") -> None:
        super().__init__(key_id)
        self.reason = reason


class NotOwner(PermissionError):
    """The key belongs to another owner."""


class RegistryFull(RuntimeError):
    """No room for the key within the quotas; `retry_after` seconds until room may free up."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KeyTooLarge(ValueError):
    """A single key exceeds what one owner may store."""


@dataclass
class _Entry:
    directory: Path
    owner: str
    model_version: str
    keys_digest: str
    size: int
    last_used: float

    def accepted_by(self, model_version: str, keys_digest: str) -> bool:
        """Whether the served model (this version, this keys digest) can use this key."""
        return accepted(self.model_version, self.keys_digest, model_version, keys_digest)


class KeyRegistry:
    """Evaluation keys by random id. Each belongs to the owner that uploaded it; an upload evicts
    only its owner's least recently used keys (never one in use), keys no served model accepts,
    or keys idle for long."""

    def __init__(self, root: Path, quota: KeyQuota | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.quota = quota or KeyQuota()
        self._lock = FileLock(self.root / ".lock")

    def directory(self, key_id: str) -> Path:
        """The key's directory; UnknownKey for an id that cannot be one of ours."""
        # the directory name is a hash of the id: no request text ever becomes part of a path
        if not isinstance(key_id, str) or not KEY_ID_PATTERN.match(key_id):
            raise UnknownKey(key_id)
        return self.root / hashlib.sha256(key_id.encode()).hexdigest()

    def add(self, serialized_keys: bytes, made_for: Claim, owner: str, screen) -> str:
        """Store keys made for the model `made_for` names (its version and keys digest) for
        `owner`, evicting within the quotas.

        ValueError if `screen` (the served scheme's door check) refuses them, KeyTooLarge beyond one owner's bytes, RegistryFull if no room can be
        made without evicting other owners' or live keys, StorageFull if the disk has no room
        even after dropping the keys no served model accepts.
        """
        if len(serialized_keys) > self.quota.bytes_per_owner:
            raise KeyTooLarge(
                f"The key has {len(serialized_keys)} bytes; one owner may store {self.quota.bytes_per_owner}."
            )
        # checked only to refuse non-keys; the executor that will run them parses the one copy
        screen(serialized_keys)
        model_version, keys_digest = made_for.model_version, made_for.keys_digest or ""
        key_id = new_key_id()
        directory = self.directory(key_id)
        staging = self.root / f".staging-{directory.name}"
        meta = {
            "model_version": model_version,
            "keys_digest": keys_digest,
            "owner": owner,
            "created": time.time(),
            "sha256": hashlib.sha256(serialized_keys).hexdigest(),
        }
        try:
            try:
                self._write_staging(staging, serialized_keys, meta)
            except StorageFull:
                with self._lock:  # keys the served model cannot use make room for one more try
                    self._evict([e for e in self._entries() if not e.accepted_by(model_version, keys_digest)])
                self._write_staging(staging, serialized_keys, meta)
            with self._lock:
                self._make_room(owner, model_version, keys_digest, len(serialized_keys))
                os.replace(staging, directory)
        finally:
            remove(staging)
        return key_id

    @staticmethod
    def _write_staging(staging: Path, serialized_keys: bytes, meta: dict) -> None:
        with writing("the evaluation key", staging):
            staging.mkdir()
            (staging / KEY_FILE).write_bytes(serialized_keys)
            (staging / META_FILE).write_text(json.dumps(meta))
            (staging / USED_FILE).touch()

    def _make_room(self, owner: str, model_version: str, keys_digest: str, size: int) -> None:
        entries = self._entries()
        evictable = [e for e in entries if not e.accepted_by(model_version, keys_digest)]  # useless
        now = time.time()
        mine = sorted(
            (e for e in entries if e.owner == owner and e not in evictable), key=lambda e: e.last_used
        )
        while mine and (
            len(mine) + 1 > self.quota.keys_per_owner
            or sum(e.size for e in mine) + size > self.quota.bytes_per_owner
        ):
            victim = next((e for e in mine if now - e.last_used >= self.quota.live_seconds), None)
            if victim is None:
                wait = max(1, int(min(e.last_used for e in mine) + self.quota.live_seconds - now) + 1)
                raise RegistryFull(
                    f"All {len(mine)} of your keys are in use (used in the last "
                    f"{self.quota.live_seconds:.0f} s), and evicting one could break a decision "
                    "under way: retry after the wait.",
                    wait,
                )
            mine.remove(victim)
            evictable.append(victim)
        idle = sorted(
            (e for e in entries if e not in evictable and now - e.last_used > self.quota.idle_seconds),
            key=lambda e: e.last_used,
        )
        kept = [e for e in entries if e not in evictable]
        while idle and self._over_total(kept, size):
            victim = idle.pop(0)
            evictable.append(victim)
            kept.remove(victim)
        if self._over_total(kept, size):
            oldest_use = min((e.last_used for e in kept), default=now)
            wait = max(1, int(oldest_use + self.quota.idle_seconds - now))
            raise RegistryFull("The key registry is full; no key of yours can make room.", wait)
        self._evict(evictable)

    @staticmethod
    def _evict(entries: list[_Entry]) -> None:
        for entry in entries:
            shutil.rmtree(entry.directory, ignore_errors=True)

    def _over_total(self, kept: list[_Entry], size: int) -> bool:
        return (
            len(kept) + 1 > self.quota.total_keys or sum(e.size for e in kept) + size > self.quota.total_bytes
        )

    def _entries(self) -> list[_Entry]:
        entries = []
        for directory in self.root.iterdir():
            if not directory.is_dir() or directory.name.startswith("."):
                continue
            meta = _read_meta(directory)
            try:
                size = (directory / KEY_FILE).stat().st_size
                last_used = (directory / USED_FILE).stat().st_mtime
            except OSError:
                size, last_used = 0, 0.0
            if meta is None:  # unreadable metadata: a key nobody can use any more
                meta = {"owner": "", "model_version": ""}
            digest = str(meta.get("keys_digest") or "")
            entries.append(_Entry(directory, meta["owner"], meta["model_version"], digest, size, last_used))
        return entries

    def _meta(self, key_id: str) -> dict:
        directory = self.directory(key_id)
        if not directory.is_dir():
            raise UnknownKey(key_id)
        meta = _read_meta(directory)
        if meta is None:
            self._discard(directory)
            raise UnknownKey(key_id, UNREADABLE)
        return meta

    def model_version(self, key_id: str) -> str:
        """The model version the key was uploaded for; UnknownKey if there is no usable key."""
        return self._meta(key_id)["model_version"]

    def made_for(self, key_id: str) -> tuple[str, str]:
        """(model version, keys digest) the key was uploaded for, from one read of its metadata;
        UnknownKey if there is no usable key."""
        meta = self._meta(key_id)
        return meta["model_version"], str(meta.get("keys_digest") or "")

    def check_owner(self, key_id: str, owner: str) -> None:
        """NotOwner unless `owner` uploaded the key."""
        if self._meta(key_id)["owner"] != owner:
            raise NotOwner("This evaluation key belongs to another party.")

    def serialized(self, key_id: str) -> bytes:
        """The stored key's bytes, checked against their digest; marks the key as used.

        UnknownKey if there is no such key or its stored copy is damaged (then it is removed).
        """
        directory = self.directory(key_id)
        meta = self._meta(key_id)
        self._touch(directory)
        try:
            serialized = (directory / KEY_FILE).read_bytes()
        except OSError:
            serialized = b""
        if hashlib.sha256(serialized).hexdigest() != meta["sha256"]:
            self.discard(key_id)
            raise UnknownKey(key_id, UNREADABLE)
        return serialized

    def touch(self, key_id: str) -> None:
        """Mark the key as used now (least-recently-used eviction)."""
        self._touch(self.directory(key_id))

    @contextmanager
    def holding(self, key_id: str, must_exist: bool = True) -> Iterator[Path]:
        """The key's directory, under the registry's lock (no eviction meanwhile): the staged
        inbox keeps a key's inputs there, so that evicting or discarding the key drops them in
        the same step. UnknownKey if `must_exist` and the key is not stored."""
        directory = self.directory(key_id)
        with self._lock:
            if must_exist and not (directory / META_FILE).exists():
                raise UnknownKey(key_id)
            yield directory

    def discard(self, key_id: str) -> None:
        """Remove a key whose stored copy proved damaged: its next use answers 404."""
        self._discard(self.directory(key_id))

    def _discard(self, directory: Path) -> None:
        # a damaged key is useless; removing it makes the next use 404, so its owner re-uploads
        with self._lock:
            shutil.rmtree(directory, ignore_errors=True)

    @staticmethod
    def _touch(directory: Path) -> None:
        try:
            os.utime(directory / USED_FILE)
        except OSError:
            pass  # evicted meanwhile: the caller finds out


def accepted(key_version: str, key_digest: str, model_version: str, keys_digest: str) -> bool:
    """A key made for `key_version` (digest `key_digest`) fits the model `model_version`
    (`keys_digest`): the same version, or one whose client specs and encoding are the same."""
    return key_version == model_version or bool(keys_digest and key_digest == keys_digest)


def _read_meta(directory: Path) -> dict | None:
    """A key directory's metadata, or None if it is missing or malformed."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    if not all(isinstance(meta.get(field), str) for field in ("model_version", "owner", "sha256")):
        return None
    return meta


def deserialize_evaluation_keys(serialized: bytes) -> fhe.EvaluationKeys:
    """Parse serialized evaluation keys; ValueError if they are not keys."""
    from concrete import fhe  # imported here: the executors' supervisor never needs concrete

    if not serialized:
        raise ValueError("The evaluation key body is empty.")
    try:
        return fhe.EvaluationKeys.deserialize(serialized)
    except RuntimeError as error:
        _logger.info("refused evaluation keys: %s", error)  # the library's words stay in the log
        raise ValueError("Not serialized concrete evaluation keys.") from None
