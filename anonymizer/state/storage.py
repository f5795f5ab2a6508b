"""A full disk as one named error: every write under MODEL_DIR turns ENOSPC/EDQUOT into StorageFull
(507), after removing what it half wrote, so a reader never sees a partial file."""

import errno
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageFull(RuntimeError):
    """The disk (or quota) holding MODEL_DIR is full: `what` could not be stored, nothing changed."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"No space left on the disk holding MODEL_DIR: {what} could not be stored, and nothing "
            "was changed. The operator must free space or grow the volume; then retry."
        )
        self.what = what


def is_no_space(error: BaseException) -> bool:
    """True for the OSErrors a full disk or an exhausted quota raise."""
    return isinstance(error, OSError) and error.errno in NO_SPACE


@contextmanager
def writing(what: str, *partial: Path):
    """Run a write; on a full disk remove `partial` (files or directories) and raise StorageFull."""
    try:
        yield
    except OSError as error:
        if not is_no_space(error):
            raise
        for path in partial:
            remove(path)
        raise StorageFull(what) from error


def remove(path: Path) -> None:
    """Delete a file or directory tree if it is there (never raises)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def write_atomically(path: Path, data: bytes, what: str) -> None:
    """Write `data` to a hidden temporary beside `path`, then replace `path` with it."""
    temporary = path.with_name(f".{path.name}-{secrets.token_hex(4)}")
    with writing(what, temporary):
        temporary.write_bytes(data)
        os.replace(temporary, path)
