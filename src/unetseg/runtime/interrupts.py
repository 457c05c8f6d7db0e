"""Ctrl-C (SIGINT) and SIGTERM as requests that a command honours at its next safe point.

Python's own SIGINT handling raises KeyboardInterrupt at whatever bytecode the main thread runs next; when
that is a finaliser (``__del__``, a weakref callback), Python prints "Exception ignored" and carries on, and
the run never stops (seen under load: a tiny training ran 100 more epochs after Ctrl-C). SIGTERM, what SLURM
and most schedulers send before they kill a job, ends a Python process at once by default, losing the epoch.
Here the first signal only records itself; the command checks with :func:`stop_if_interrupted` at its safe
points (training: after every step and validation image; predict: after every file) and stops there with
:class:`Interrupted`, which carries the signal, so the exit status is 128 + its number (130, 143). A second
signal raises at once, as Python would.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

# SIGHUP: the terminal or ssh session closed (POSIX only)
HANDLED = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
_received: list[int] = []  # the signals received since the block began


class Interrupted(KeyboardInterrupt):
    """A stop at a safe point, asked for by ``signum``; ``detail`` is the one line the CLI prints (what was
    kept, how to go on), set by the command that knows it."""

    def __init__(self, signum: int, detail: str = "", safe: bool = True) -> None:
        super().__init__(signum)
        self.signum = signum
        self.detail = detail
        self.safe = safe  # raised at a safe point (False: a second signal, raised wherever the program was)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _received:  # the second signal: do not wait for the safe point
        raise Interrupted(signum, safe=False)
    _received.append(signum)


@contextmanager
def interrupts_between_steps() -> Iterator[None]:
    """Within this block, SIGINT and SIGTERM wait for :func:`stop_if_interrupted` (main thread only: elsewhere,
    e.g. in a launcher's worker thread, signals cannot be handled and the block changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {signum: signal.signal(signum, _on_signal) for signum in HANDLED}
    try:
        yield  # a signal after the last safe point lets the work that is done finish as it would have
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received.clear()


def interrupt_requested() -> bool:
    return bool(_received)


def stop_if_interrupted(detail: str = "") -> None:
    """Raise :class:`Interrupted` here if a signal arrived since the block began (``detail``: what was kept)."""
    if _received:
        raise Interrupted(_received[0], detail)
