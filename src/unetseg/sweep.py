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

from unetseg.reporting.sweeps import (
    best_job,
    score_rows,
    split_overrides,
    summarize,
    write_fold_ensemble,
    write_sweep_report,
)
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
    """One row per job: only the overrides that differ between jobs (the shared ones in the caption), the
    monitored score, Dice per class, a warning on jobs that learned a constant answer, the best job in bold."""
    monitor = score_rows(rows)
    best = best_job(rows, monitor)
    shared, differing = split_overrides(rows)
    classes = sorted({key for row in rows for key in row.get("best_scores", {}) if key.startswith("dice_")})
    caption = f"shared by every job: {' '.join(shared)}" if shared else None
    table = Table(title="sweep summary", title_justify="left", caption=caption, caption_justify="left")
    headers = ["job", "overrides", "status", f"best {monitor}", *(f"Dice {c.removeprefix('dice_')}" for c in classes)]
    headers += ["best epoch", "epochs", "minutes", "note"]
    for header in headers:
        table.add_column(header, justify="left" if header in ("overrides", "status", "note") else "right")
    for row in rows:
        scores = row.get("best_scores", {})
        value = row.get("best_monitored")
        cells = [row["job"], differing[row["job"]] or "(none)", row["status"], "–" if value is None else f"{value:.4f}"]
        cells += [f"{scores[c]:.4f}" if c in scores else "–" for c in classes]
        minutes = f"{row['wall_time_s'] / 60:.1f}" if "wall_time_s" in row else "–"
        cells += [str(row.get("best_epoch", "–")), str(row.get("epochs", "–")), minutes]
        note = row.get("error", "") or ""
        if row.get("constant"):
            note = f"⚠ never predicts {row['constant']}: a constant answer"
        if row["job"] == best:
            note = "best" + (f"; {note}" if note else "")
        style = "red" if row["status"] != "completed" else ("bold green" if row["job"] == best else "")
        table.add_row(*cells, note, style=style)
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
        try:
            ensemble = write_fold_ensemble(sweep_dir, rows)  # a sweep over the folds: one ensemble of them
        except Exception as error:  # e.g. a full disk: the summary above stands
            ensemble = f"[yellow]warning:[/] no ensemble.yaml ({type(error).__name__}: {error})"
        if ensemble:
            console.print(ensemble)
