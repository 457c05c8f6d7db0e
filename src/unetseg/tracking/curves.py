"""Learning curves as PNG pictures (matplotlib's object API with the Agg renderer: no display, no pyplot
state, so it is safe in a training process and in a sweep's callback).

``run_curves`` draws one run: losses, Dice per class, pixel error, Rand error, learning rate and epoch time,
with the best epoch marked in every panel. ``sweep_curves`` draws a sweep: the monitored score per epoch of
every job on one chart, and each job's best value as a bar.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unetseg.io.atomic import write_bytes_atomic
from unetseg.runtime.console import console
from unetseg.scoring.names import DICE, LOSS, PIXEL_ERROR, RAND_ERROR, dice_of, lower_is_better
from unetseg.tracking.history import best_epoch, read_history, run_title, series

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVES_SIZE = (1200, 700)  # pixels of curves.png
SWEEP_SIZE = (1200, 500)  # pixels of sweep.png
_DPI = 100


def _figure(size: tuple[int, int]) -> Figure:
    from matplotlib.figure import Figure  # imported on first use: half a second every command need not pay

    return Figure(figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI, layout=None)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def run_curves(history: list[dict[str, Any]], class_names: Sequence[str], monitor: str, title: str) -> bytes:
    """The PNG of one run's curves, from its ``metrics.jsonl`` records."""
    figure = _figure(CURVES_SIZE)
    best = best_epoch(history)
    figure.suptitle(f"{title} · best epoch {best} by {monitor}" if best else title, fontsize=11)
    axes = figure.subplots(2, 3, sharex=True).ravel()
    figure.subplots_adjust(left=0.06, right=0.99, bottom=0.08, top=0.9, wspace=0.25, hspace=0.2)
    # (title, y label, [(metric key, line label)], legend corner: where rising or falling curves leave room)
    panels: list[tuple[str, str, list[tuple[str, str]], str]] = [
        ("loss", "loss (lower is better)", [("train_loss", "training"), (LOSS.key, "validation")], "upper right"),
        (
            "Dice per class (validation)",
            "Dice (higher is better)",
            [*((dice_of(n).key, n) for n in class_names), (DICE.key, "mean")],
            "lower right",
        ),
        ("pixel error (validation)", "fraction of pixels wrong", [(PIXEL_ERROR.key, "pixel error")], "upper right"),
        (
            "adapted Rand error (validation)",
            "Rand error (lower is better)",
            [(RAND_ERROR.key, "Rand error")],
            "upper right",
        ),
        ("learning rate", "learning rate", [("lr", "lr")], "upper right"),
        ("epoch time", "seconds per epoch", [("epoch_time_s", "train + validation")], "lower right"),
    ]
    for axis, (panel_title, ylabel, lines, corner) in zip(axes, panels, strict=True):
        drawn = False
        for key, label in lines:
            epochs, values = series(history, key)
            if not values:
                continue
            axis.plot(epochs, values, marker="." if len(values) < 30 else None, label=label)
            drawn = True
            if key == monitor and best is not None and best in epochs:
                axis.plot([best], [values[epochs.index(best)]], "*", markersize=12, color="black")
        if drawn and best is not None:
            axis.axvline(best, color="grey", linestyle=":", linewidth=1, label=f"best epoch {best}")
        if not drawn:
            axis.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=axis.transAxes, color="grey")
        axis.set_title(panel_title, fontsize=10, y=1.0)  # a fixed y skips matplotlib's costly title placement
        axis.set_ylabel(ylabel, fontsize=9)
        axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        axis.grid(alpha=0.3)
        if drawn:
            axis.legend(fontsize=8, loc=corner)
    from matplotlib.ticker import MaxNLocator

    for axis in axes[3:]:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(figure)


class CurvesFile:
    """A run's curves.png, redrawn after an epoch while drawing costs at most ``budget`` of the run's time
    so far, data loading included (a drawing takes about 0.4 s on a 2-core CPU: after every epoch once
    epochs last 40 s or more, every few epochs for shorter ones), and always at the end. A drawing that
    fails is reported once and the curves are left as they are: they must never cost the run."""

    def __init__(self, run_dir: Path, class_names: Sequence[str], monitor: str, budget: float = 0.01) -> None:
        self.path = run_dir / "curves.png"
        self.history_path = run_dir / "metrics.jsonl"
        self.title = run_title(run_dir)
        self.failed = False
        self.class_names, self.monitor, self.budget = list(class_names), monitor, budget
        self.drawing_s = 0.0  # spent drawing so far
        self.last_drawing_s = 0.0

    def update(self, training_s: float, final: bool = False) -> bool:
        """Redraw from metrics.jsonl unless that would exceed the budget (``final``: always); True if drawn."""
        if self.failed or (not final and self.drawing_s + self.last_drawing_s > self.budget * training_s):
            return False
        started = time.perf_counter()
        try:
            png = run_curves(read_history(self.history_path), self.class_names, self.monitor, self.title)
            write_bytes_atomic(self.path, png)
        except Exception as error:
            self.failed = True
            reason = f"{type(error).__name__}: {error}"
            console.print(f"[yellow]warning:[/] curves.png not drawn ({reason}); training goes on")
            return False
        self.last_drawing_s = time.perf_counter() - started
        self.drawing_s += self.last_drawing_s
        return True


@dataclass
class SweepJob:
    """One job of a sweep as the chart shows it."""

    job: str  # its number: the bar's label
    label: str  # the number and the overrides that set it apart: the curve's legend
    history: list[dict[str, Any]]
    best: float | None  # its best monitored value (None: failed or missing)


def sweep_curves(jobs: Sequence[SweepJob], monitor: str) -> bytes:
    """The PNG of a sweep: the monitored score per epoch of every job, and each job's best as a bar."""
    figure = _figure(SWEEP_SIZE)
    curves_axis, bars_axis = figure.subplots(1, 2, width_ratios=[3, 2])
    figure.subplots_adjust(left=0.06, right=0.97, bottom=0.12, top=0.9, wspace=0.45)
    lower = lower_is_better(monitor)
    direction = "lower" if lower else "higher"
    for job in jobs:
        epochs, values = series(job.history, monitor)
        if values:
            curves_axis.plot(epochs, values, label=job.label)
    curves_axis.set_title(f"{monitor} per epoch (validation, {direction} is better)", fontsize=10, y=1.0)
    from matplotlib.ticker import MaxNLocator

    curves_axis.set_xlabel("epoch")
    curves_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves_axis.set_ylabel(monitor)
    curves_axis.grid(alpha=0.3)
    if any(job.history for job in jobs):
        curves_axis.legend(fontsize=8, loc="upper right" if lower else "lower right")
    labels = [f"job {job.job}" for job in jobs]
    values = [job.best if job.best is not None else 0.0 for job in jobs]
    colours = ["tab:blue" if job.best is not None else "tab:red" for job in jobs]
    positions = list(range(len(jobs)))
    bars_axis.barh(positions, values, color=colours)
    bars_axis.set_yticks(positions, labels, fontsize=8)
    bars_axis.invert_yaxis()
    for position, job in zip(positions, jobs, strict=True):
        text = f"{job.best:.4f}" if job.best is not None else "failed"
        bars_axis.text(values[position], position, f" {text}", va="center", fontsize=8)
    bars_axis.set_title(f"best {monitor} per job (red: failed)", fontsize=10, y=1.0)
    bars_axis.set_xlabel(monitor)
    bars_axis.grid(alpha=0.3, axis="x")
    return _png(figure)
