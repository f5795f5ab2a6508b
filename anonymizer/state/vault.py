"""Models at rest: authenticated encryption (Fernet) of model files, with a key from outside the code."""

import logging
import os
import secrets
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from .storage import writing

_logger = logging.getLogger(__name__)

KEY_FILE_NAME = "model.key"


class SealError(ValueError):
    """A sealed file is tampered with, truncated, or sealed under another key."""


class ModelKeyError(ValueError):
    """The model key is missing, unreadable or not a Fernet key."""


class Vault:
    """Seals and opens model files; nothing is parsed before it authenticates."""

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as error:
            raise ModelKeyError(
                "The model key must be 32 url-safe base64-encoded bytes (Fernet.generate_key())."
            ) from error

    def write(self, path: Path, plaintext: bytes) -> None:
        """Encrypt and authenticate `plaintext` into `path`."""
        path.write_bytes(self._fernet.encrypt(plaintext))

    def read(self, path: Path) -> bytes:
        """The authenticated plaintext of `path`, or SealError."""
        try:
            return self._fernet.decrypt(path.read_bytes())
        except InvalidToken:
            raise SealError(
                f"{path.name} failed authentication: it was modified or sealed with another key."
            ) from None


class ModelKeySource:
    """Where the model key comes from: ANONYMIZER_MODEL_KEY, a key file, or (development only) a
    key generated beside the models in MODEL_DIR/model.key. Reading it never crashes a worker."""

    def __init__(self, model_dir: Path, key: str | None = None, key_file: Path | None = None) -> None:
        self._key = key
        self.generated = not key and not key_file
        self.path = None if key else Path(key_file or Path(model_dir) / KEY_FILE_NAME)

    @property
    def is_set(self) -> bool:
        """Whether an operator configured the key (environment or file), not generated here."""
        return bool(self._key) or not self.generated

    def describe(self) -> str:
        """Where the key is taken from, for `GET /` and the log (never the key itself)."""
        if self._key:
            return "ANONYMIZER_MODEL_KEY"
        if self.generated:
            return f"{self.path} (generated beside the models: development only)"
        return str(self.path)

    def stamp(self) -> tuple | None:
        """Changes when the key file is replaced (workers then re-read it)."""
        try:
            stat = self.path.stat() if self.path else None
        except OSError:
            return None
        return stat and (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def vault(self) -> Vault:
        """A vault under the configured key; ModelKeyError if it is missing or malformed."""
        if self._key:
            return Vault(self._key.encode())
        if self.generated:
            self._create_if_missing()
        try:
            return Vault(_read_key(self.path))
        except OSError as error:
            _logger.error("the model key file %s is unreadable: %s", self.path, error)
            raise ModelKeyError("The model key file is unreadable (the server's log names it).") from None
        except ModelKeyError:
            _logger.error("the model key file %s does not hold a Fernet key", self.path)
            raise ModelKeyError("The model key file does not hold a Fernet key.") from None

    def replace_unreadable_key(self) -> Vault:
        """A vault under a new generated key, the unreadable one moved aside (generated keys only).

        Versions sealed under the old key stay unreadable; the caller is about to publish a new one.
        """
        if not self.generated:
            raise ModelKeyError(
                f"The configured model key ({self.describe()}) is unusable: configure the right key."
            )
        aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            _logger.error("The model key %s was unreadable: moved to %s", self.path, aside)
        except FileNotFoundError:
            pass
        return self.vault()

    def _create_if_missing(self) -> None:
        # all workers race to create the same file; linking a complete temporary file lets exactly
        # one win, and a full disk leaves no empty key behind (StorageFull instead)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            return
        temporary = self.path.with_name(f".{self.path.name}-{secrets.token_hex(4)}")
        with writing("the generated model key", temporary):
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(Fernet.generate_key())
            try:
                os.link(temporary, self.path)
                _logger.warning("Generated the model key %s (0600).", self.path)
            except FileExistsError:
                pass
            finally:
                temporary.unlink(missing_ok=True)

    def warn_if_beside_models(self) -> None:
        """Log loudly at every start while the key lies next to what it protects."""
        if self.generated:
            _logger.warning(
                "MODEL KEY BESIDE THE MODELS: %s lies in MODEL_DIR, so anyone who can read the "
                "volume can open the sealed models. Development only: set ANONYMIZER_MODEL_KEY or "
                "ANONYMIZER_MODEL_KEY_FILE (a secret mounted outside MODEL_DIR) in production.",
                self.path,
            )


def _read_key(path: Path) -> bytes:
    # another worker may have created the file a moment ago and still be writing 44 bytes
    for _ in range(50):
        key = path.read_bytes().strip()
        if len(key) == 44:
            return key
        time.sleep(0.02)
    return key
