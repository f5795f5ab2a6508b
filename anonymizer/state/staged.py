"""The staged-input inbox: each party's ciphertext waits in its key's directory until a prediction
with that key consumes it (or, if its party allowed `uses` > 1, that many predictions: the
applicant's `explain`). The inbox reaches a key's directory only through `KeyRegistry.holding`
(under the registry's lock), because the inputs live and die with their key: evicting it drops
them in the same step. Every write is a temporary file and an atomic replace."""

import hashlib
import os
from pathlib import Path

from ..wire import MAX_STAGED_USES
from .keys import KeyRegistry
from .storage import write_atomically, writing

DIGEST_BYTES = 32
MAX_USES = MAX_STAGED_USES


class StagedInputs:
    """Staged ciphertexts by key id and party index, behind their SHA-256 (damage is dropped).

    Nothing here needs free space once a ciphertext is stored: a prediction renames what it takes
    aside and back (a failed one loses nothing on a full disk), and a use count is the name of an
    empty marker file (`input-<i>.uses-<n>`), counted down by renaming.
    """

    def __init__(self, registry: KeyRegistry) -> None:
        self._registry = registry

    def stage(self, key_id: str, party_index: int, ciphertext: bytes, uses: int = 1) -> None:
        """Keep one party's serialized ciphertext for the next `uses` predictions with this key.

        UnknownKey if the key is not stored; StorageFull (nothing changed) if the disk has no room.
        """
        if not 1 <= uses <= MAX_USES:
            raise ValueError(f"uses must be 1 to {MAX_USES}, got {uses}.")
        with self._registry.holding(key_id) as directory:
            self._write(directory, party_index, ciphertext)
            _set_uses(directory, party_index, uses)
        self._registry.touch(key_id)

    def take(self, key_id: str, party_indices: list[int], uses: int = 1) -> dict[int, bytes]:
        """Take the staged ciphertexts of these parties for one call that shows `uses` decisions:
        each is set aside (until `consume` or `put_back`), or kept with `uses` fewer if its party
        staged it for more. One staged for fewer is left as it is (not taken: its party did not
        consent to that many decisions). A damaged one is dropped, so the party is asked to
        stage again."""
        taken = {}
        with self._registry.holding(key_id, must_exist=False) as directory:
            for index in party_indices:
                ciphertext = _read_intact(directory, index)
                left = _uses(directory, index)
                if ciphertext is not None and left < uses:
                    continue
                try:
                    if ciphertext is not None and left > uses:
                        _set_uses(directory, index, left - uses)
                    elif ciphertext is not None:
                        os.replace(_path(directory, index), _taken_path(directory, index))
                        _set_uses(directory, index, 1)  # no use left: its marker goes too
                    else:
                        _path(directory, index).unlink()
                except OSError:
                    continue
                if ciphertext:
                    taken[index] = ciphertext
        return taken

    def consume(self, key_id: str, staged: dict[int, bytes]) -> None:
        """Forget what a successful prediction took."""
        directory = self._registry.directory(key_id)
        for index in staged:
            _taken_path(directory, index).unlink(missing_ok=True)

    def put_back(self, key_id: str, staged: dict[int, bytes], uses: int = 1) -> None:
        """Return staged ciphertexts a failed call of `uses` decisions took, unless a party
        re-staged meanwhile."""
        with self._registry.holding(key_id, must_exist=False) as directory:
            for index, ciphertext in staged.items():
                if not directory.exists():
                    continue
                set_aside = _taken_path(directory, index)
                if not _path(directory, index).exists():
                    self._put_aside_back(directory, index, set_aside, ciphertext)
                    _set_uses(directory, index, uses)
                elif _read_intact(directory, index) == ciphertext:  # kept for more uses
                    _set_uses(directory, index, _uses(directory, index) + uses)
                set_aside.unlink(missing_ok=True)

    def _put_aside_back(self, directory: Path, index: int, set_aside: Path, ciphertext: bytes) -> None:
        try:
            os.replace(set_aside, _path(directory, index))
        except FileNotFoundError:  # taken by a worker that died before this one: write it again
            self._write(directory, index, ciphertext)

    @staticmethod
    def _write(directory: Path, party_index: int, ciphertext: bytes) -> None:
        write_atomically(
            _path(directory, party_index),
            hashlib.sha256(ciphertext).digest() + ciphertext,
            f"the staged input of party {party_index}",
        )


def _path(directory: Path, party_index: int) -> Path:
    return directory / f"input-{party_index}.bin"


def _taken_path(directory: Path, party_index: int) -> Path:
    return directory / f".taken-{party_index}.bin"


def _markers(directory: Path, party_index: int) -> list[Path]:
    return list(directory.glob(f"input-{party_index}.uses-*"))


def _uses(directory: Path, party_index: int) -> int:
    counts = [marker.name.rpartition("-")[2] for marker in _markers(directory, party_index)]
    valid = [int(count) for count in counts if count.isdigit()]
    return max(1, min(MAX_USES, max(valid))) if valid else 1  # no marker: one prediction


def _set_uses(directory: Path, party_index: int, uses: int) -> None:
    markers = _markers(directory, party_index)
    target = directory / f"input-{party_index}.uses-{uses}"
    if uses > 1 and markers:
        os.replace(markers.pop(), target)  # a rename: no free space needed
    elif uses > 1:
        with writing("a staged input's use count"):
            target.touch()
    for stale in markers:
        stale.unlink(missing_ok=True)


def _read_intact(directory: Path, party_index: int) -> bytes | None:
    try:
        stored = _path(directory, party_index).read_bytes()
    except OSError:
        return None
    digest, ciphertext = stored[:DIGEST_BYTES], stored[DIGEST_BYTES:]
    return ciphertext if hashlib.sha256(ciphertext).digest() == digest else None
