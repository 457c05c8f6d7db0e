"""The end of a sweep (`unetseg train -m ...`): a table, summary.csv, sweep.png and report.html built from
each job's files (unetseg.reporting.sweeps).

Hydra skips ``on_multirun_end`` when a job raises, so every job catches its own error and records it in
its ``metrics.json`` (see runner.guarded); the summary reads those files, marks failed or missing jobs,
and the command's exit code is non-zero when any job failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table

from unetseg.reporting.sweeps import COLUMNS, summarize, write_sweep_report
from unetseg.runtime.console import console

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
        try:
            report, rows = write_sweep_report(sweep_dir)  # also writes summary.csv and sweep.png
            written = f"summary: {sweep_dir / 'summary.csv'} · chart: {sweep_dir / 'sweep.png'} · report: {report}"
        except Exception as error:  # the table and the failed-job count matter more than the chart
            rows = summarize(sweep_dir)
            written = f"summary: {sweep_dir / 'summary.csv'} · no report ({type(error).__name__}: {error})"
        _failed = sum(row["status"] != "completed" for row in rows)
        console.print(summary_table(rows))
        console.print(written + (f" · [red]{_failed} job(s) failed[/]" if _failed else ""))
