"""Reading a run's history: ``metrics.jsonl`` (one line per epoch) and ``metrics.json`` (the summary)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from unetseg.runtime.errors import UserError


def read_history(path: Path) -> list[dict[str, Any]]:
    """The epochs recorded in ``metrics.jsonl``, in order. A line cut short by a crash is skipped (the
    file is appended to, one line per epoch); a file that holds no epoch at all is an error."""
    if not path.is_file():
        raise UserError(f"{path} does not exist: is {path.parent} a training run directory (outputs/train/...)?")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    if not records:
        raise UserError(f"{path} holds no epoch: the run stopped before its first epoch ended; train it again")
    return records


def read_summary(run_dir: Path) -> dict[str, Any]:
    """``metrics.json`` of a finished (or failed) run; empty when the run was stopped before the end."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    return summary if isinstance(summary, dict) else {}


def run_title(run_dir: Path) -> str:
    """How charts and reports name a run: ``train/2026-11-27_10-00-00_1234`` (its folder and its parent)."""
    return f"{run_dir.parent.name}/{run_dir.name}"


def best_epoch(history: list[dict[str, Any]]) -> int | None:
    """The last epoch marked best (the one best.pt holds), if any."""
    marked = [record["epoch"] for record in history if record.get("best")]
    return marked[-1] if marked else None


def series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Epochs and finite values of one metric (epochs where it is missing or not finite are left out)."""
    epochs, values = [], []
    for record in history:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            epochs.append(record["epoch"])
            values.append(float(value))
    return epochs, values
