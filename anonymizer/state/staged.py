"""The staged-input inbox: each party's ciphertext waits in its key's directory until a prediction
with that key consumes it. Every write is a temporary file and an atomic replace."""

import hashlib
import os
import secrets
from pathlib import Path

from .keys import META_FILE, KeyRegistry, UnknownKey

DIGEST_BYTES = 32


class StagedInputs:
    """Staged ciphertexts by key id and party index, behind their SHA-256 (damage is dropped)."""

    def __init__(self, registry: KeyRegistry) -> None:
        self._registry = registry

    def _path(self, key_id: str, party_index: int) -> Path:
        return self._registry.directory(key_id) / f"input-{party_index}.bin"

    def stage(self, key_id: str, party_index: int, ciphertext: bytes) -> None:
        """Keep one party's serialized ciphertext until a prediction with this key consumes it."""
        directory = self._registry.directory(key_id)
        with self._registry.lock:
            if not (directory / META_FILE).exists():
                raise UnknownKey(key_id)
            self._write(directory, party_index, ciphertext)
        self._registry.touch(key_id)

    def take(self, key_id: str, party_indices: list[int]) -> dict[int, bytes]:
        """Remove and return the staged ciphertexts of these parties (those that exist and are
        intact: a damaged one is dropped, so the party is asked to stage again)."""
        taken = {}
        with self._registry.lock:
            for index in party_indices:
                path = self._path(key_id, index)
                try:
                    stored = path.read_bytes()
                    path.unlink()
                except OSError:
                    continue
                digest, ciphertext = stored[:DIGEST_BYTES], stored[DIGEST_BYTES:]
                if ciphertext and hashlib.sha256(ciphertext).digest() == digest:
                    taken[index] = ciphertext
        return taken

    def put_back(self, key_id: str, staged: dict[int, bytes]) -> None:
        """Return staged ciphertexts a failed prediction took, unless a party re-staged meanwhile."""
        directory = self._registry.directory(key_id)
        with self._registry.lock:
            for index, ciphertext in staged.items():
                if directory.exists() and not self._path(key_id, index).exists():
                    self._write(directory, index, ciphertext)

    def _write(self, directory: Path, party_index: int, ciphertext: bytes) -> None:
        temporary = directory / f".input-{party_index}-{secrets.token_hex(4)}"
        temporary.write_bytes(hashlib.sha256(ciphertext).digest() + ciphertext)
        os.replace(temporary, directory / f"input-{party_index}.bin")
