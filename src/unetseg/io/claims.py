"""Claiming a folder before writing into it, so that two unetseg commands never write into the same one.

A claim is an exclusive ``flock`` on a lock file in the folder, held for the life of the command. flock rather
than creating a marker file exclusively (``O_EXCL``): the kernel drops the lock when the process dies, however
it dies (SIGKILL, a power cut), so a killed run never leaves a stale claim that someone must delete by hand.
The lock file also says who holds it (command, process id, host, start time), for the refusal message. Not
guaranteed: network file systems without working locks (some NFS set-ups) let both writers through.

When the claim is taken, temporary files that an earlier, killed writer left behind (``.NAME.PID.XXXXXXXX.tmp``,
see :func:`unetseg.io.atomic.atomic_open`) are removed: those whose writer process is gone, outside subfolders
that another command has claimed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import TextIO

from unetseg.runtime.errors import UserError

LOCK_NAME = ".unetseg-claim.lock"
_HELD: set[Path] = set()  # the folders this process has claimed
# atomic_open's temporary names: "." + target name + "." + writer's pid + "." + 8 random characters + ".tmp"
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]{8}\.tmp$")


class FolderClaim:
    """An exclusive claim on ``folder`` (made if missing); :meth:`release` gives it up and removes the lock
    file, and the folder too if the command made it and left nothing in it. Claiming a folder this process
    holds already is a claim that changes nothing (the runner claims a training's fixed run folder before Hydra
    writes there; the command's own claim is then that one)."""

    def __init__(self, folder: Path, command: str, fix: str) -> None:
        self.folder = folder
        self.lock_path = folder / LOCK_NAME
        self.key = folder.resolve()
        self.handle: TextIO | None = None
        self.stale_removed = 0
        self.created = False
        if self.key in _HELD:
            return
        self.created = not folder.exists()
        self.handle = _acquire(folder, self.lock_path, command, fix)
        _HELD.add(self.key)
        self.stale_removed = remove_stale_temporaries(folder)

    def release(self) -> None:
        if self.handle is None:
            return
        self.lock_path.unlink(missing_ok=True)  # while still locked: a newcomer re-checks the inode
        self.handle.close()
        self.handle = None
        _HELD.discard(self.key)
        if self.created:
            with contextlib.suppress(OSError):  # only if empty
                self.folder.rmdir()

    def __enter__(self) -> FolderClaim:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def claim_folder(folder: Path, command: str, fix: str) -> FolderClaim:
    """Claim ``folder`` for ``unetseg <command>``, or stop with one line naming the process that holds it
    (``fix`` says what the user can do instead, e.g. "choose another output=")."""
    return FolderClaim(folder, command, fix)


def _acquire(folder: Path, lock_path: Path, command: str, fix: str) -> TextIO | None:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no claim, as before
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {folder}: {error.strerror}; {fix}") from None
    for _ in range(10):  # the lock file may be unlinked by its holder between our open and our lock
        try:
            handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the command's life)
        except OSError as error:
            raise UserError(f"cannot write in {folder}: {error.strerror}; {fix}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe_holder(handle.read())
            handle.close()
            raise UserError(f"{folder} is in use by {holder}: wait for it to finish, or {fix}") from None
        try:
            same_file = os.fstat(handle.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        record = {"command": command, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        handle.write(json.dumps(record))
        handle.flush()
        return handle
    raise UserError(f"could not claim {folder}: its lock file keeps changing; {fix}")


def folder_in_use(folder: Path) -> str | None:
    """Who holds a claim on ``folder`` now (None if nobody), without claiming it or creating anything."""
    lock_path = folder / LOCK_NAME
    try:
        import fcntl

        handle = open(lock_path, encoding="utf-8")  # noqa: SIM115
    except (ImportError, OSError):
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe_holder(handle.read())
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _describe_holder(text: str) -> str:
    try:
        record = json.loads(text)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record["started"])))
        return f"another unetseg {record['command']} (process {record['pid']} on {record['host']}, since {started})"
    except (ValueError, KeyError, TypeError):
        return "another unetseg command"


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the atomic-write temporaries under ``folder`` whose writer is gone (killed mid-write), leaving
    subfolders another command has claimed alone; returns how many were deleted."""
    removed = 0
    for root, subfolders, files in os.walk(folder):
        subfolders[:] = [name for name in subfolders if folder_in_use(Path(root) / name) is None]
        for name in files:
            match = _TEMPORARY.match(name)
            if match and not _alive(int(match.group(1))):
                (Path(root) / name).unlink(missing_ok=True)
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a claim is of one machine: see the module's note)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
