"""What a sweep (`unetseg train -m ...`) produced, read from each job's files: one row per job for
summary.csv and the console table, the sweep chart (sweep.png) and the sweep's report.html."""

from __future__ import annotations

import csv
import io
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from unetseg import __version__
from unetseg.io.atomic import write_bytes_atomic, write_text_atomic
from unetseg.model.ensemble import ENSEMBLE_FILE, Member, write_ensemble
from unetseg.reporting.pages import data_uri, render, write_page
from unetseg.reporting.run_dir import job_dirs
from unetseg.runtime.errors import UserError
from unetseg.scoring.names import DICE, IOU, lower_is_better
from unetseg.tracking.curves import SweepJob, sweep_curves
from unetseg.tracking.history import read_history, read_summary, run_title

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
    "constant",
    "error",
    "run_dir",
]


def job_row(job_dir: Path) -> dict[str, Any]:
    """One job as a row: its overrides, status and best figures (failed and unfinished jobs say so)."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    row: dict[str, Any] = {
        "job": job_dir.name,
        "override_list": [str(o) for o in overrides or []],
        "overrides": " ".join(map(str, overrides or [])),
        "run_dir": str(job_dir),
    }
    summary = read_summary(job_dir)
    if not summary:
        return {**row, "status": "missing", "error": "no readable metrics.json: the job did not finish"}
    row["status"] = summary.get("status", "unknown")
    row["error"] = summary.get("error", "")
    if row["status"] == "completed":
        row.update(
            best_dice=round(summary["best"].get(DICE.key, math.nan), 4),
            best_iou=round(summary["best"].get(IOU.key, math.nan), 4),
            best_epoch=summary["best_epoch"],
            epochs=summary["epochs"],
            parameters=summary["parameters"],
            wall_time_s=round(summary["wall_time_s"], 2),
        )
        row["monitor"], row["best_scores"] = summary.get("monitor", DICE.key), summary["best"]
        row["constant"] = " ".join(never_predicted(summary["best"]))
    return row


def never_predicted(scores: dict[str, Any]) -> list[str]:
    """The classes whose Dice is 0 at the best epoch: the job never predicts them right, i.e. it learned a
    constant answer (e.g. "all cell" on ISBI: mean Dice 0.44 that looks like an ordinary result)."""
    return [key.removeprefix("dice_") for key, value in scores.items() if key.startswith("dice_") and value == 0]


def summarize(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows for every job folder under ``sweep_dir``; writes summary.csv there."""
    rows = [job_row(job_dir) for job_dir in job_dirs(sweep_dir)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(sweep_dir / "summary.csv", buffer.getvalue())
    return rows


def sweep_monitor(rows: list[dict[str, Any]]) -> str:
    """The score jobs are compared by: their trainer.monitor when all share it, else mean Dice (a sweep over
    trainer.monitor must not compare a Dice with a Rand error)."""
    monitors = {row["monitor"] for row in rows if row.get("monitor")}
    return monitors.pop() if len(monitors) == 1 else DICE.key


def score_rows(rows: list[dict[str, Any]]) -> str:
    """Give every completed row its ``best_monitored`` by the sweep's one monitor; returns that monitor."""
    monitor = sweep_monitor(rows)
    for row in rows:
        value = row.get("best_scores", {}).get(monitor)
        row["best_monitored"] = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    return monitor


def best_job(rows: list[dict[str, Any]], monitor: str) -> str | None:
    """The completed job with the best monitored score (``score_rows`` first)."""
    scored = [row for row in rows if row.get("best_monitored") is not None]
    if not scored:
        return None
    pick = min if lower_is_better(monitor) else max
    return pick(scored, key=lambda r: r["best_monitored"])["job"]


def split_overrides(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """The overrides every job shares (none for a single job), and each job's others: what sets it apart."""
    lists = [row.get("override_list", []) for row in rows]
    common = set.intersection(*(set(overrides) for overrides in lists)) if len(lists) > 1 else set()
    shared = [o for o in lists[0] if o in common] if lists else []
    return shared, {row["job"]: " ".join(o for o in row.get("override_list", []) if o not in common) for row in rows}


def write_sweep_chart(sweep_dir: Path, rows: list[dict[str, Any]], monitor: str) -> bytes:
    """sweep.png beside summary.csv: every job's monitored score per epoch, and its best as a bar."""
    jobs = []
    _, differing = split_overrides(rows)
    for row in rows:
        try:
            history = read_history(Path(row["run_dir"]) / "metrics.jsonl")
        except UserError:
            history = []
        label = f"{row['job']}: {differing[row['job']] or '(no overrides of its own)'}"
        jobs.append(SweepJob(row["job"], label, history, row.get("best_monitored")))
    png = sweep_curves(jobs, monitor)
    write_bytes_atomic(sweep_dir / "sweep.png", png)
    return png


def write_sweep_report(sweep_dir: Path) -> tuple[Path, list[dict[str, Any]]]:
    """summary.csv, sweep.png and report.html of a sweep folder; returns the report's path and the rows."""
    if not sweep_dir.is_dir() or not job_dirs(sweep_dir):
        raise UserError(f"{sweep_dir} has no job folders (0/, 1/, ...): give a sweep folder (outputs/sweep/<sweep>)")
    rows = summarize(sweep_dir)
    monitor = score_rows(rows)
    png = write_sweep_chart(sweep_dir, rows, monitor)
    best = best_job(rows, monitor)
    shared, differing = split_overrides(rows)
    for row in rows:
        row["differing"] = differing[row["job"]]
        report = Path(row["run_dir"]) / "report.html"
        row["report"] = f"{row['job']}/report.html" if report.is_file() else None
        row["kind"] = "best" if row["job"] == best else ("" if row["status"] == "completed" else "failed")
    html = render(
        "sweep.html.j2",
        version=__version__,
        written=f"{datetime.now():%Y-%m-%d %H:%M}",
        sweep_name=run_title(sweep_dir),
        sweep_dir=str(sweep_dir.resolve()),
        rows=rows,
        monitor=monitor,
        best=best,
        shared=" ".join(shared),
        chart=data_uri(png),
    )
    target = sweep_dir / "report.html"
    write_page(target, html)
    return target, rows


def _fold_of(overrides: list[str]) -> int | None:
    """The data.fold=N among a job's overrides, or None."""
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key == "data.fold" and value.strip().lstrip("-").isdigit():
            return int(value)
    return None


def write_fold_ensemble(sweep_dir: Path, rows: list[dict[str, Any]]) -> str | None:
    """ensemble.yaml in the sweep folder when the jobs differ only in data.fold (``-m data.folds=K
    data.fold=0,...``): every completed job's best.pt with its fold; failed jobs are left out, and said.
    Returns the line to print, or None for any other sweep."""
    if len(rows) < 2:
        return None
    lists = [row.get("override_list", []) for row in rows]
    common = set.intersection(*(set(overrides) for overrides in lists))
    keys = {o.lstrip("+~").partition("=")[0] for overrides in lists for o in overrides if o not in common}
    if keys != {"data.fold"}:
        return None
    members: list[Member] = []
    left_out: list[dict[str, Any]] = []
    for row, overrides in zip(rows, lists, strict=True):
        fold, best = _fold_of(overrides), Path(row["run_dir"]) / "checkpoints" / "best.pt"
        if row["status"] == "completed" and best.is_file():
            members.append(Member(best, fold))
        else:
            why = row.get("error") or ("no checkpoints/best.pt" if row["status"] == "completed" else row["status"])
            left_out.append({"job": row["job"], "fold": fold, "status": row["status"], "why": why})
    said = "; left out: " + ", ".join(f"job {o['job']} (fold {o['fold']}, {o['status']})" for o in left_out)
    said = said if left_out else ""
    if not members:
        return f"no {ENSEMBLE_FILE}: none of the fold jobs completed{said}"
    config = members[0].checkpoint.parents[1] / ".hydra" / "config.yaml"  # the job's composed config
    folds = OmegaConf.select(OmegaConf.load(config), "data.folds") if config.is_file() else None
    target = sweep_dir / ENSEMBLE_FILE
    write_ensemble(target, members, folds, left_out)
    return f"ensemble of {len(members)} fold(s): {target} (for predict and evaluate: checkpoint=<that file>){said}"
