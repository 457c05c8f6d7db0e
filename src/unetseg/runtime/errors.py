"""The one exception type that means "the user gave us something we cannot use"."""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input: printed as one line (what is wrong and how to fix it), exit code 2, no traceback."""


EXIT_USER_ERROR = 2

EXIT_ENVIRONMENT = 1  # the machine, not the input: a full disk, a read-only folder

# What the user can do about each storage error (errno name → advice).
_STORAGE_ADVICE = {
    errno.ENOSPC: ("no space left on the device", "free some space there, or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space there, or write elsewhere"),
    errno.EROFS: ("the file system is read-only", "write elsewhere"),
    errno.EACCES: ("permission denied", "fix the permissions, or write elsewhere"),
    errno.EPERM: ("operation not permitted", "fix the permissions, or write elsewhere"),
}


def describe_storage_error(error: OSError) -> str | None:
    """One line for an OSError the user can fix by freeing space or writing elsewhere (None for others)."""
    if error.errno not in _STORAGE_ADVICE:
        return None
    what, advice = _STORAGE_ADVICE[error.errno]
    where = f" ({error.filename})" if error.filename else ""
    return f"{what}{where}: {advice}; the files written before are complete"


class MachineFault(Exception):
    """The machine stopped the command (a full disk, a read-only folder): printed as one line (what happened,
    what to do), exit code 1, no traceback."""


_OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "not enough memory")


def describe_out_of_memory(error: BaseException) -> str | None:
    """One line for running out of memory (MemoryError, torch's CPU allocator or CUDA), None for other errors."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not isinstance(error, MemoryError) and not any(marker in text.lower() for marker in _OUT_OF_MEMORY):
        return None
    detail = f" ({text[:160]})" if text else ""
    return (
        f"out of memory{detail}: train on crops (data.patch_size=256) with a smaller trainer.batch_size or "
        "model.base_channels, or predict with a smaller tile_size"
    )
