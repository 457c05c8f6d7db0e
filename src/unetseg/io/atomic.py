"""Writing files safely: atomically (a temporary file beside the target, renamed into place), and never over
an existing file unless the user said overwrite=true."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from unetseg.runtime.errors import UserError


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


@contextmanager
def atomic_open(path: Path, durable: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary handle whose content appears at ``path`` only if the block completes.

    A crash or an exception leaves the old file (or no file) in place and removes the temporary one.
    ``durable``: the content reaches the disk before the rename, and the rename before this returns, so
    that a power cut leaves the old file or the new one, never an empty one (checkpoints, metrics.json).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's process id in the name: only a dead writer's temporaries are cleaned (unetseg.io.claims).
    # (At most 200 characters of the name: with the rest, it stays within the 255 a file name may have.)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:200]}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as handle:  # by name, not fd: writers such as tifffile want handle.name
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the permissions open() would have given
        os.replace(tmp, path)
        if durable:
            _fsync_folder(path.parent)
    except OSError as error:  # e.g. a full disk mid-write: name the file the user knows, not the temporary one
        Path(tmp).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; folders cannot be opened on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str, durable: bool = False) -> None:
    with atomic_open(path, durable) as handle:
        handle.write(text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(data)


def copy_atomic(source: Path, target: Path) -> None:
    with atomic_open(target) as handle, source.open("rb") as reader:
        shutil.copyfileobj(reader, handle)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (POSIX flock; no lock where there is none, e.g. Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def refuse_to_overwrite(paths: Sequence[Path], overwrite: bool) -> None:
    """The one overwrite check: outputs that exist are replaced only with overwrite=true. Called before any
    slow work, so that a refusal comes at once."""
    existing = [path for path in paths if path.exists()]
    folders = [path for path in existing if path.is_dir()]
    if folders:  # not even overwrite=true replaces a folder with a file
        raise UserError(f"{folders[0]} is a folder where an output file goes: move it, or choose another output=")
    if not existing or overwrite:
        return
    if len(paths) == 1:
        what = f"{existing[0]} already exists"
    else:
        what = f"{len(existing)} output file(s) already exist in {existing[0].parent} (e.g. {existing[0].name})"
    raise UserError(f"{what}: choose another output= or set overwrite=true")
