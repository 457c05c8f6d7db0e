"""Ctrl-C during training as a request that the loop honours between steps.

Python's own SIGINT handling raises KeyboardInterrupt at whatever bytecode the main thread runs next; when
that is a finaliser (``__del__``, a weakref callback), Python prints "Exception ignored" and carries on, and
the run never stops (seen under load: a tiny training ran 100 more epochs after Ctrl-C). Here the first
SIGINT only sets a flag, which the training loop checks after every step and validation image and turns
into KeyboardInterrupt there; a second SIGINT raises at once, as Python would.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_requested = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if _requested.is_set():  # the second Ctrl-C: do not wait for the loop
        raise KeyboardInterrupt
    _requested.set()


@contextmanager
def interrupts_between_steps() -> Iterator[None]:
    """Within this block, Ctrl-C waits for :func:`stop_if_interrupted` (main thread only: elsewhere, e.g. in a
    launcher's worker thread, signals cannot be handled and the block changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
        stop_if_interrupted()  # a Ctrl-C after the last check still counts
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


def stop_if_interrupted() -> None:
    """Raise KeyboardInterrupt here if Ctrl-C was pressed since the block began."""
    if _requested.is_set():
        raise KeyboardInterrupt
