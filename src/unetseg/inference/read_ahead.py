"""Reading ahead: decode the next image in a background thread while the model runs on this one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


def read_ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """``items`` in order, produced by a thread that runs ahead of the consumer by at most ``depth`` queued
    items plus the one it is producing: ``depth`` + 2 decoded images at most, never a whole folder or
    stack. An exception in the producer is raised in the consumer; a consumer that stops early stops the
    thread. Decoding (OpenCV, zlib) releases the GIL, so it overlaps with the network's forward passes."""
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # handed to the consumer, which raises it
            put(error)
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="unetseg-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
