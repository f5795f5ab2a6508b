"""Evaluation keys and staged party ciphertexts, kept under MODEL_DIR so they survive restarts."""

import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

from concrete import fhe
from filelock import FileLock

KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}$")  # secrets.token_urlsafe(16): 128 random bits
KEY_FILE = "evaluation.keys"
META_FILE = "meta.json"


class UnknownKey(KeyError):
    """No evaluation key has this id (never issued, evicted, or malformed)."""


class KeyStore:
    """Evaluation keys by random id, at most `max_keys` (oldest evicted with its staged inputs)."""

    def __init__(self, root: Path, max_keys: int = 20, cached_keys: int = 2) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_keys = max_keys
        self._lock = FileLock(self.root / ".lock")
        self._cache: OrderedDict[str, fhe.EvaluationKeys] = OrderedDict()
        self._cache_size = cached_keys
        self._cache_lock = threading.Lock()

    def _dir(self, key_id: str) -> Path:
        # the directory name is a hash of the id: no request text ever becomes part of a path
        if not isinstance(key_id, str) or not KEY_ID_PATTERN.match(key_id):
            raise UnknownKey(key_id)
        return self.root / hashlib.sha256(key_id.encode()).hexdigest()

    def add(self, serialized_keys: bytes, model_version: str) -> str:
        """Store evaluation keys made for `model_version`; raises ValueError if they do not parse."""
        keys = deserialize_evaluation_keys(serialized_keys)
        key_id = secrets.token_urlsafe(16)
        directory = self._dir(key_id)
        staging = self.root / f".staging-{directory.name}"
        staging.mkdir()
        (staging / KEY_FILE).write_bytes(serialized_keys)
        meta = {"model_version": model_version, "created": time.time()}
        (staging / META_FILE).write_text(json.dumps(meta))
        with self._lock:
            os.replace(staging, directory)
            self._evict_beyond_cap()
        self._remember(key_id, keys)
        return key_id

    def _evict_beyond_cap(self) -> None:
        entries = []
        for directory in self.root.iterdir():
            if directory.is_dir() and not directory.name.startswith("."):
                try:
                    created = json.loads((directory / META_FILE).read_text())["created"]
                except (OSError, ValueError, KeyError):
                    created = 0.0
                entries.append((created, directory.name, directory))
        for _, _, directory in sorted(entries)[: max(0, len(entries) - self.max_keys)]:
            shutil.rmtree(directory, ignore_errors=True)

    def model_version(self, key_id: str) -> str:
        """The model version the key was uploaded for; UnknownKey if there is no such key."""
        try:
            return json.loads((self._dir(key_id) / META_FILE).read_text())["model_version"]
        except (FileNotFoundError, NotADirectoryError):
            raise UnknownKey(key_id) from None

    def evaluation_keys(self, key_id: str) -> fhe.EvaluationKeys:
        """The deserialized keys (a few recent ones are cached: they are tens of MB)."""
        with self._cache_lock:
            if key_id in self._cache:
                self._cache.move_to_end(key_id)
                return self._cache[key_id]
        try:
            serialized = (self._dir(key_id) / KEY_FILE).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise UnknownKey(key_id) from None
        keys = deserialize_evaluation_keys(serialized)
        self._remember(key_id, keys)
        return keys

    def _remember(self, key_id: str, keys: fhe.EvaluationKeys) -> None:
        with self._cache_lock:
            self._cache[key_id] = keys
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _input_path(self, key_id: str, party_index: int) -> Path:
        return self._dir(key_id) / f"input-{party_index}.bin"

    def stage(self, key_id: str, party_index: int, ciphertext: bytes) -> None:
        """Keep one party's serialized ciphertext until a prediction with this key consumes it."""
        directory = self._dir(key_id)
        with self._lock:
            if not (directory / META_FILE).exists():
                raise UnknownKey(key_id)
            target = self._input_path(key_id, party_index)
            temporary = directory / f".input-{party_index}-{secrets.token_hex(4)}"
            temporary.write_bytes(ciphertext)
            os.replace(temporary, target)

    def take_staged(self, key_id: str, party_indices: list[int]) -> dict[int, bytes]:
        """Remove and return the staged ciphertexts of these parties (those that exist)."""
        taken = {}
        with self._lock:
            for index in party_indices:
                path = self._input_path(key_id, index)
                if path.exists():
                    taken[index] = path.read_bytes()
                    path.unlink()
        return taken

    def put_back(self, key_id: str, staged: dict[int, bytes]) -> None:
        """Return staged ciphertexts a failed prediction took, unless a party re-staged meanwhile."""
        directory = self._dir(key_id)
        with self._lock:
            for index, ciphertext in staged.items():
                path = self._input_path(key_id, index)
                if directory.exists() and not path.exists():
                    path.write_bytes(ciphertext)


def deserialize_evaluation_keys(serialized: bytes) -> fhe.EvaluationKeys:
    """Parse serialized evaluation keys; ValueError if they are not keys."""
    if not serialized:
        raise ValueError("The evaluation key body is empty.")
    try:
        return fhe.EvaluationKeys.deserialize(serialized)
    except RuntimeError as error:
        raise ValueError(f"Not serialized concrete evaluation keys: {error}") from error
