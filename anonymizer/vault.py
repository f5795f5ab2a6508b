"""Models at rest: authenticated encryption (Fernet) of model files, with a key from outside the code."""

import logging
import os
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

_logger = logging.getLogger(__name__)

KEY_FILE_NAME = "model.key"


class SealError(ValueError):
    """A sealed file is tampered with, truncated, or sealed under another key."""


class Vault:
    """Seals and opens model files; nothing is parsed before it authenticates."""

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as error:
            raise ValueError(
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


def load_or_create_key(model_dir: Path, key: str | None, key_file: Path | None) -> bytes:
    """`key`, else the key in `key_file`, else MODEL_DIR/model.key.

    The last one is generated (mode 0600) if it does not exist; all workers race to the same file.
    """
    if key:
        return key.encode()
    path = Path(key_file or Path(model_dir) / KEY_FILE_NAME)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    with os.fdopen(descriptor, "wb") as file:
        file.write(Fernet.generate_key())
    _logger.warning("No model key configured: generated %s (0600). Back it up.", path)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    # another worker may have created the file a moment ago and still be writing 44 bytes
    for _ in range(50):
        key = path.read_bytes().strip()
        if len(key) == 44:
            return key
        time.sleep(0.02)
    raise ValueError(f"The model key file {path} does not hold a Fernet key.")
