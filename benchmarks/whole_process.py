"""Helpers of the end-to-end benchmarks: time a whole process, and summarise alternating rounds."""

from __future__ import annotations

import shlex
import statistics
import subprocess
import sys
import time


def timed(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one run of ``command``; a failing run stops the benchmark with its stderr."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{shlex.join(command)} failed:\n{result.stderr}")
    return seconds


def summarise(seconds: dict[str, list[float]], baseline: str = "plain loop") -> dict[str, dict[str, object]]:
    """Per contender: the median of its rounds, the rounds, and the baseline's median over it."""
    plain = statistics.median(seconds[baseline])
    rows: dict[str, dict[str, object]] = {}
    for name, values in seconds.items():
        median = statistics.median(values)
        rows[name] = {
            "seconds": round(median, 2),
            "rounds": [round(v, 2) for v in values],
            "vs_plain": round(plain / median, 2),
        }
    return rows
