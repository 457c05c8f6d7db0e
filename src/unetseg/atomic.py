"""Atomic file writes: write a temporary file beside the target, then rename it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Yield a binary handle whose content appears at ``path`` only if the block completes.

    A crash or an exception leaves the old file (or no file) in place and removes the temporary one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as handle:  # by name, not fd: writers such as tifffile want handle.name
            yield handle
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the permissions open() would have given
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text.encode("utf-8"))


def copy_atomic(source: Path, target: Path) -> None:
    with atomic_open(target) as handle, source.open("rb") as reader:
        shutil.copyfileobj(reader, handle)
