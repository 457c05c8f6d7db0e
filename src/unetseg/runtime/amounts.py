"""Amounts in words: 1234567 bytes → "1.2 MB", for messages that give sizes."""

from __future__ import annotations

BYTES = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
PIXELS = ("px", "kpx", "Mpx", "Gpx", "Tpx")


def in_units(value: float, units: tuple[str, ...] = BYTES) -> str:
    """1234567 → "1.2 M<unit>": one decimal, in the largest unit (steps of 1000) that is at least 1."""
    for power, unit in reversed(list(enumerate(units))):
        if value >= 1000**power or power == 0:
            return f"{value / 1000**power:.1f} {unit}"
    raise AssertionError  # pragma: no cover
