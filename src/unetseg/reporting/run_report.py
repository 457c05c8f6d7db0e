"""``report.html`` of a training run: the run at a glance, its curves, its best and last validation
figures, and the validation gallery at the best checkpoint."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from unetseg import __version__
from unetseg.data.pairing import ISBI_DEFAULT_ROOT
from unetseg.io.atomic import write_bytes_atomic
from unetseg.reporting.gallery import DEFAULT_IMAGES, Gallery, build_gallery
from unetseg.reporting.pages import data_uri, duration, number, render, write_page
from unetseg.reporting.run_dir import TrainingRun, load_run
from unetseg.runtime.errors import UserError
from unetseg.scoring.names import DICE, PIXEL_ERROR, RAND_ERROR, Score, dice_of, validation_scores
from unetseg.tracking.curves import run_curves
from unetseg.tracking.history import best_epoch, run_title
from unetseg.tracking.pictures import FALSE_FOREGROUND, MISSED_FOREGROUND


def _threshold(setting: Any, recorded: Any) -> str:
    """trainer.threshold, and with auto the threshold chosen after training (metrics.json)."""
    if setting == "auto" and isinstance(recorded, dict) and recorded.get("by") != "trainer.threshold":
        return f"auto: {recorded.get('chosen')} (chosen by {recorded.get('by')} on the validation images)"
    return str(setting)


def _glance(run: TrainingRun, best: dict[str, Any] | None) -> list[tuple[str, str]]:
    s, summary = run.setting, run.summary
    data = summary.get("data", {})
    source = s("data.source", "?")
    synthetic = f"synthetic ({s('data.synthetic.num_images')} images)"
    where = (s("data.root") or f"{ISBI_DEFAULT_ROOT} (the default)") if source == "folder" else synthetic
    if data:
        counts = f"{data['train_images']} training, {data['val_images']} validation images"
        counts += f" · sizes {', '.join(data['image_sizes'])}"
    else:
        counts = "counts not recorded (a run from an earlier unetseg)"
    split = f"data.val_root={s('data.val_root')}" if s("data.val_root") else f"last {s('data.val_fraction')} held out"
    if s("data.folds"):
        split = f"fold {s('data.fold')} of {s('data.folds')} (contiguous blocks) held out"
    patch = s("data.patch_size")
    crops = f", {patch}×{patch} crops" if patch else ", whole images"
    if s("data.samples_per_epoch"):
        crops += f", {s('data.samples_per_epoch')} samples per epoch"
    parameters = summary.get("parameters")
    ema = s("trainer.monitor_ema", 0) or 0
    trained = len(run.history)
    epochs = f"{trained} of {s('trainer.epochs', '?')}" + (" (stopped early)" if summary.get("stopped_early") else "")
    monitor = s("trainer.monitor", "?")
    best_value, best_at = (best.get(monitor), best["epoch"]) if best else (None, None)
    return [
        ("Data", f"{where} · {counts} · split: {split}"),
        (
            "Model",
            f"U-Net {s('model.upsampling', '?')}, width {s('model.base_channels', '?')}, depth {s('model.depth', '?')}"
            + (f", {number(parameters)} parameters" if parameters else ""),
        ),
        (
            "Recipe",
            f"{s('optim.name', '?')} lr {s('optim.lr', '?')}, {s('schedule.name', '?')} schedule, "
            f"{s('trainer.loss', '?')} loss, batch {s('trainer.batch_size', '?')}{crops}, "
            f"threshold {_threshold(s('trainer.threshold', '?'), summary.get('threshold'))}",
        ),
        ("Precision", summary.get("precision", "not recorded")),
        ("Epochs", epochs),
        ("Best epoch", f"{best_at} by {monitor}" + (f" (EMA {ema})" if ema else "") + f": {number(best_value)}"),
        ("Wall time", duration(summary.get("wall_time_s"))),
        ("Run folder", str(run.path.resolve())),
    ]


def _warnings(best: dict[str, Any] | None, class_names: list[str]) -> list[tuple[str, str]]:
    """Glance rows for a model that looks fine by a mean but misses a class entirely."""
    if best is None:
        return []
    rows = []
    for name in class_names:
        dice = best.get(dice_of(name).key)
        if isinstance(dice, (int, float)) and dice == 0:
            rows.append(
                (
                    "Warning",
                    f"Dice {name} is 0 at the best epoch: the model gets no {name} pixel right (a model that "
                    "predicts one class everywhere looks like this; train longer or with another recipe)",
                )
            )
    return rows


def _status(run: TrainingRun) -> str:
    status = run.summary.get("status")
    if status == "completed":
        return "completed"
    if status == "failed":
        return f"failed: {run.summary.get('error', '')}"
    return "not finished (no metrics.json): stopped, or still training"


def _entry_scores(class_names: list[str], gallery: Gallery | None) -> list[Score]:
    """The scores each gallery image shows: the one it is ranked by first, then pixel error, Dice per class
    and Rand error."""
    shown = [PIXEL_ERROR, *(dice_of(n) for n in class_names), RAND_ERROR]
    if gallery is None:
        return shown
    ranked = next((s for s in validation_scores(class_names) if s.key == gallery.ranked_by), None)
    return shown if ranked is None or ranked in shown else [ranked, *shown]


def current_curves(run: TrainingRun, class_names: list[str], monitor: str) -> bytes:
    """curves.png if it shows every epoch of metrics.jsonl (it is drawn within a time budget, and a stopped
    run may have epochs it does not show), else the curves drawn afresh and written there."""
    curves_file, history_file = run.path / "curves.png", run.path / "metrics.jsonl"
    if curves_file.is_file() and curves_file.stat().st_mtime >= history_file.stat().st_mtime:
        return curves_file.read_bytes()
    png = run_curves(run.history, class_names, monitor, run_title(run.path))
    write_bytes_atomic(curves_file, png)  # the run's own curves.png, brought up to date
    return png


def write_run_report(run_dir: Path, gallery_limit: int | None = None, device: str = "auto") -> tuple[Path, str]:
    """Write ``run_dir/report.html`` with at most ``gallery_limit`` gallery images (None: the run's
    trainer.report_images); return its path and why it has no gallery ("" when it has one)."""
    run = load_run(run_dir)
    if gallery_limit is None:
        gallery_limit = int(run.setting("trainer.report_images", DEFAULT_IMAGES))
    class_names = [str(n) for n in run.setting("data.class_names", ["background", "foreground"])]
    monitor = str(run.setting("trainer.monitor", DICE.key))
    curves = current_curves(run, class_names, monitor)
    best_at = best_epoch(run.history)
    best = next((record for record in run.history if record["epoch"] == best_at), None)
    rows = ([("best", best)] if best else []) + [("last", run.history[-1])]
    figures = [{"kind": kind, "label": f"{kind} ({r['epoch']})", "epoch": r["epoch"], "scores": r} for kind, r in rows]

    gallery: Gallery | None = None
    gallery_note = ""
    if gallery_limit == 0:
        gallery_note = "switched off (trainer.report_images=0, or unetseg report --images 0)"
    elif not run.best_checkpoint.is_file():
        gallery_note = f"{run.best_checkpoint} is missing (the gallery is drawn with the best checkpoint)"
    else:
        try:
            gallery = build_gallery(run, gallery_limit, device)
        except (UserError, OSError) as error:
            gallery_note = str(error)

    html = render(
        "run.html.j2",
        version=__version__,
        written=f"{datetime.now():%Y-%m-%d %H:%M}",
        run_name=run_title(run.path),
        status=_status(run),
        overrides=run.overrides,
        glance=_warnings(best, class_names) + _glance(run, best),
        curves=data_uri(curves),
        scores=validation_scores(class_names),
        figures=figures,
        gallery=gallery,
        gallery_note=gallery_note,
        entry_scores=_entry_scores(class_names, gallery),
        false_foreground="rgb({},{},{})".format(*FALSE_FOREGROUND),
        missed_foreground="rgb({},{},{})".format(*MISSED_FOREGROUND),
    )
    target = run.path / "report.html"
    write_page(target, html)
    return target, gallery_note
