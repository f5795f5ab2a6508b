"""The staged-input inbox: each party's ciphertext waits in its key's directory until a prediction
with that key consumes it (or, if its party allowed `uses` > 1, that many predictions: the
applicant's `explain`). Every write is a temporary file and an atomic replace."""

import hashlib
import os
import secrets
from pathlib import Path

from .keys import META_FILE, KeyRegistry, UnknownKey

DIGEST_BYTES = 32
MAX_USES = 64


class StagedInputs:
    """Staged ciphertexts by key id and party index, behind their SHA-256 (damage is dropped)."""

    def __init__(self, registry: KeyRegistry) -> None:
        self._registry = registry

    def _path(self, key_id: str, party_index: int) -> Path:
        return self._registry.directory(key_id) / f"input-{party_index}.bin"

    def _uses_path(self, key_id: str, party_index: int) -> Path:
        return self._registry.directory(key_id) / f"input-{party_index}.uses"

    def stage(self, key_id: str, party_index: int, ciphertext: bytes, uses: int = 1) -> None:
        """Keep one party's serialized ciphertext for the next `uses` predictions with this key."""
        if not 1 <= uses <= MAX_USES:
            raise ValueError(f"uses must be 1 to {MAX_USES}, got {uses}.")
        directory = self._registry.directory(key_id)
        with self._registry.lock:
            if not (directory / META_FILE).exists():
                raise UnknownKey(key_id)
            self._write(directory, party_index, ciphertext)
            self._set_uses(key_id, party_index, uses)
        self._registry.touch(key_id)

    def _uses(self, key_id: str, party_index: int) -> int:
        try:
            return max(1, min(MAX_USES, int(self._uses_path(key_id, party_index).read_text())))
        except (OSError, ValueError):
            return 1  # absent (staged for one prediction) or damaged: the safe count

    def _set_uses(self, key_id: str, party_index: int, uses: int) -> None:
        path = self._uses_path(key_id, party_index)
        if uses <= 1:
            path.unlink(missing_ok=True)
            return
        temporary = path.with_name(f".{path.name}-{secrets.token_hex(4)}")
        temporary.write_text(str(uses))
        os.replace(temporary, path)

    def take(self, key_id: str, party_indices: list[int]) -> dict[int, bytes]:
        """Take the staged ciphertexts of these parties for one prediction: each is removed, or
        kept with one use less if its party staged it for several. A damaged one is dropped, so
        the party is asked to stage again."""
        taken = {}
        with self._registry.lock:
            for index in party_indices:
                ciphertext = self._read_intact(key_id, index)
                uses = self._uses(key_id, index)
                try:
                    if ciphertext is not None and uses > 1:
                        self._set_uses(key_id, index, uses - 1)
                    else:
                        self._path(key_id, index).unlink()
                        self._set_uses(key_id, index, 1)
                except OSError:
                    continue
                if ciphertext:
                    taken[index] = ciphertext
        return taken

    def put_back(self, key_id: str, staged: dict[int, bytes]) -> None:
        """Return staged ciphertexts a failed prediction took, unless a party re-staged meanwhile."""
        directory = self._registry.directory(key_id)
        with self._registry.lock:
            for index, ciphertext in staged.items():
                if not directory.exists():
                    continue
                if not self._path(key_id, index).exists():
                    self._write(directory, index, ciphertext)
                elif self._read_intact(key_id, index) == ciphertext:  # kept for more uses
                    self._set_uses(key_id, index, self._uses(key_id, index) + 1)

    def _read_intact(self, key_id: str, party_index: int) -> bytes | None:
        try:
            stored = self._path(key_id, party_index).read_bytes()
        except OSError:
            return None
        digest, ciphertext = stored[:DIGEST_BYTES], stored[DIGEST_BYTES:]
        return ciphertext if hashlib.sha256(ciphertext).digest() == digest else None

    def _write(self, directory: Path, party_index: int, ciphertext: bytes) -> None:
        temporary = directory / f".input-{party_index}-{secrets.token_hex(4)}"
        temporary.write_bytes(hashlib.sha256(ciphertext).digest() + ciphertext)
        os.replace(temporary, directory / f"input-{party_index}.bin")
