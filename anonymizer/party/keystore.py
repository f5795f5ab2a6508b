"""The party's key store: where its keys for the served model live on disk, and the record of
what the server knows them as. The one place that names those files."""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..wire import FheInfo

RECORD_FILE = "server-key-id.json"


@dataclass(frozen=True)
class KeyRecord:
    """Our key on the server: its id and the version it was made for; for a Paillier co-party,
    `joined` (the applicant's public key, not ours) and the fingerprint pinned when joining."""

    key_id: str
    model_version: str | None = None
    joined: bool = False
    fingerprint: str | None = None


class KeyStore:
    """Key directories under `root`, one per keys digest: a refit that keeps the client specs and
    encoding keeps the keys (and their id on the server). Directories 0700, files 0600."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def directory(self, info: FheInfo) -> Path:
        """The key directory of the served model (not created here)."""
        name = f"keys-{info.keys_digest[:32]}" if info.keys_digest else info.model_version
        return self.root / name

    def ready(self, info: FheInfo) -> Path:
        """The key directory, created 0700 if need be."""
        directory = self.directory(info)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory

    def made(self, info: FheInfo) -> bool:
        """Whether keys for the served keys digest are on disk (besides their record)."""
        directory = self.directory(info)
        return directory.exists() and any(p.name != RECORD_FILE for p in directory.iterdir())

    def protect(self, info: FheInfo) -> None:
        """0700 on the key directory and its subdirectories, 0600 on every file in it."""
        directory = self.directory(info)
        for path in [directory, *directory.rglob("*")]:
            os.chmod(path, 0o700 if path.is_dir() else 0o600)

    def record(self, info: FheInfo) -> KeyRecord | None:
        """What the server knows our keys for the served digest as, if they were uploaded or joined."""
        path = self.directory(info) / RECORD_FILE
        if not path.exists():
            return None
        fields = json.loads(path.read_text())
        return KeyRecord(
            fields["key_id"],
            fields.get("model_version"),
            bool(fields.get("joined")),
            fields.get("fingerprint"),
        )

    def keep(self, info: FheInfo, record: KeyRecord) -> None:
        """Remember `record` beside the keys (0600)."""
        path = self.ready(info) / RECORD_FILE
        path.write_text(json.dumps(asdict(record)))
        os.chmod(path, 0o600)

    def forget(self, info: FheInfo) -> None:
        """Forget the server's id of our keys (the keys stay): the next use uploads them again."""
        (self.directory(info) / RECORD_FILE).unlink(missing_ok=True)
