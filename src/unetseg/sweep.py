"""The end of a sweep (`unetseg train -m ...`): a table and summary.csv built from each job's files.

Hydra skips ``on_multirun_end`` when a job raises, so every job catches its own error and records it in
its ``metrics.json`` (see runner.guarded); the summary reads those files, marks failed or missing jobs,
and the command's exit code is non-zero when any job failed.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from unetseg.io.atomic import write_text_atomic
from unetseg.runtime.console import console
from unetseg.scoring.names import DICE, IOU

COLUMNS = [
    "job",
    "overrides",
    "status",
    "best_dice",
    "best_iou",
    "best_epoch",
    "epochs",
    "parameters",
    "wall_time_s",
    "error",
    "run_dir",
]

_failed = 0


_failed_here = 0  # jobs that failed in this process (any command; the callback covers train's launchers)


def reset() -> None:
    global _failed, _failed_here
    _failed = _failed_here = 0


def record_failure() -> None:
    global _failed_here
    _failed_here += 1


def failed_jobs() -> int:
    return max(_failed, _failed_here)


def _job_row(job_dir: Path) -> dict[str, Any]:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    row: dict[str, Any] = {
        "job": job_dir.name,
        "overrides": " ".join(map(str, overrides or [])),
        "run_dir": str(job_dir),
    }
    metrics_file = job_dir / "metrics.json"
    if not metrics_file.is_file():
        return {**row, "status": "missing", "error": "no metrics.json: the job did not finish"}
    summary = json.loads(metrics_file.read_text(encoding="utf-8"))
    row["status"] = summary.get("status", "unknown")
    row["error"] = summary.get("error", "")
    if row["status"] == "completed":
        row.update(
            best_dice=round(summary["best"][DICE.key], 4),
            best_iou=round(summary["best"][IOU.key], 4),
            best_epoch=summary["best_epoch"],
            epochs=summary["epochs"],
            parameters=summary["parameters"],
            wall_time_s=round(summary["wall_time_s"], 2),
        )
    return row


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows for every job folder (0, 1, ...) under ``sweep_dir``; writes summary.csv there."""
    job_dirs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    rows = [_job_row(job_dir) for job_dir in job_dirs]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(sweep_dir / "summary.csv", buffer.getvalue())
    return rows


def summary_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="sweep summary", title_justify="left")
    for column in COLUMNS[:-1]:
        table.add_column(column, justify="right" if column not in ("overrides", "status") else "left")
    for row in rows:
        style = "" if row["status"] == "completed" else "red"
        table.add_row(*(str(row.get(column, "")) for column in COLUMNS[:-1]), style=style)
    return table


class SweepSummary(Callback):
    """Hydra callback (conf/train.yaml: hydra.callbacks) that prints and saves the sweep summary."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _failed
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarize(sweep_dir)
        _failed = sum(row["status"] != "completed" for row in rows)
        console.print(summary_table(rows))
        console.print(
            f"summary: {sweep_dir / 'summary.csv'}" + (f" · [red]{_failed} job(s) failed[/]" if _failed else "")
        )
