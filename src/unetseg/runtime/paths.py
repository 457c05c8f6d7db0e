"""Where configs live, how user paths resolve, and how run directories are named."""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from unetseg.runtime.errors import UserError

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/unetseg (or unetseg/ in a wheel)


def config_dir() -> str:
    """The conf/ folder: the checkout's in a source or editable install, else the one in the wheel.

    The wheel carries conf/ as ``unetseg/conf`` (hatchling force-include). An editable install keeps
    importing from ``src/``, where ``../../conf`` is the checkout's conf/, so edits there take effect.
    """
    checkout = _PACKAGE_DIR.parent.parent / "conf"
    if (checkout / "train.yaml").is_file():
        return str(checkout)
    return str(_PACKAGE_DIR / "conf")


def user_path(path: str | os.PathLike[str]) -> Path:
    """A path from the command line, resolved against the directory the command was run from.

    hydra.job.chdir is false, so the process never leaves that directory; resolving here makes the
    absolute path explicit in logs, checkpoints and error messages.
    """
    given = Path(os.path.expanduser(os.fspath(path)))
    try:
        return given.resolve()
    except (RuntimeError, OSError):  # a symbolic link loop (RuntimeError before Python 3.13, OSError since)
        raise UserError(f"{given} is a symbolic link that leads back to itself: fix or remove the link") from None


CACHE_VARIABLE = "UNETSEG_CACHE_DIR"


def cache_root() -> Path:
    """unetseg's cache folder (things it can always make again, such as converted models):
    $UNETSEG_CACHE_DIR, else $XDG_CACHE_HOME/unetseg, else ~/.cache/unetseg. Delete it at any time."""
    if os.environ.get(CACHE_VARIABLE):
        return user_path(os.environ[CACHE_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).resolve() / "unetseg"


_STAMP: str | None = None


STAMP_VARIABLE = "UNETSEG_RUN_STAMP"


def run_stamp() -> str:
    """Time to the second plus the process id: two runs started in the same second never collide.

    The stamp is exported in the environment, so sweep jobs that a launcher runs in worker processes name
    their folders under the same sweep directory as the process that started them.
    """
    global _STAMP
    if _STAMP is None:
        given = os.environ.get(STAMP_VARIABLE, "")
        # Only a plain folder name (as a parent process made it): never a path that leads out of outputs/.
        valid = re.fullmatch(r"[\w.-]+", given) is not None and given not in (".", "..")
        _STAMP = given if valid else f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{os.getpid()}"
        os.environ[STAMP_VARIABLE] = _STAMP
    return _STAMP


def share_run_stamp(stamp: str) -> None:
    """Use ``stamp`` (rank 0's, under torchrun) for this process's run directory."""
    global _STAMP
    _STAMP = stamp
    os.environ[STAMP_VARIABLE] = stamp


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("unetseg_stamp"):
        OmegaConf.register_new_resolver("unetseg_stamp", run_stamp)
