"""`unetseg evaluate`: predict labelled images with a checkpoint (the same Predictor as `unetseg predict`)
and score them as the ISBI 2012 challenge does; print a table, write metrics.json."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from unetseg.config import EvaluateConfig
from unetseg.data.dataset import LabelledImages, load_pairs, load_splits
from unetseg.data.labels import LabelRule
from unetseg.inference.evaluation import score_images
from unetseg.inference.predictor import Predictor, build_predictor, objects_settings
from unetseg.io.atomic import refuse_to_overwrite, write_text_atomic
from unetseg.io.strict_json import to_json
from unetseg.model.ensemble import checkpoint_paths
from unetseg.runner import run_command
from unetseg.runtime.console import console
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import user_path
from unetseg.scoring.instances import InstanceCounts
from unetseg.scoring.tables import metrics_table

log = logging.getLogger(__name__)


def labelled_images(cfg: EvaluateConfig, predictor: Predictor) -> tuple[LabelledImages, str]:
    """The images to score, normalised as the checkpoint was trained, and a description of them."""
    checkpoint = predictor.checkpoint
    spec, normalizer = checkpoint.model, checkpoint.normalization
    # Labels become targets as the network was trained: masks, or background/interior/boundary.
    rule = LabelRule(spec.num_classes, cfg.data.label_encoding.value, checkpoint.target, checkpoint.boundary_width)
    if cfg.input is not None and cfg.labels is not None:
        images, labels = user_path(cfg.input), user_path(cfg.labels)
        items = load_pairs(
            images, labels, spec.in_channels, rule, normalizer, cfg.data.label_suffix, max_pixels=cfg.data.max_pixels
        )
        return items, f"{images} with labels {labels}"
    train, val = load_splits(cfg.data, spec.in_channels, rule, normalizer)
    chosen = {"val": val, "train": train, "all": train + val}[cfg.split]
    where = cfg.data.root if cfg.data.root is not None else "synthetic data"
    fold = f", fold {cfg.data.fold} of {cfg.data.folds}" if cfg.data.folds is not None else ""
    names = f"{', '.join(chosen.names[:6])}{' ...' if len(chosen) > 6 else ''}"
    return chosen, f"{where} · split {cfg.split}{fold} ({names})"


def finite_or_none(scores: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: an undefined score (e.g. a Rand error without true cells) is written as null."""
    return {key: (None if math.isnan(value) else round(value, 6)) for key, value in scores.items()}


def object_report(counts: InstanceCounts, predictor: Predictor) -> dict[str, Any]:
    """The set's object counts and, per IoU threshold, tp/fp/fn, precision, recall, F1 and AP."""
    assert predictor.instance_rule is not None
    return {
        "method": predictor.instance_rule.method,
        "true_objects": counts.true_objects,
        "predicted_objects": counts.predicted_objects,
        "per_threshold": {
            threshold: finite_or_none({key: float(value) for key, value in row.items()})
            for threshold, row in counts.per_threshold().items()
        },
    }


def evaluate(cfg: EvaluateConfig, run_dir: Path) -> dict[str, Any]:
    paths = checkpoint_paths(cfg.checkpoint, cfg.runs_root)
    predictor = build_predictor(cfg, paths, cfg.checkpoint)
    name = paths[0].name if len(paths) == 1 else f"an ensemble of {len(paths)}"
    checkpoints = str(paths[0]) if len(paths) == 1 else ", ".join(map(str, paths))
    method, settings = objects_settings(cfg)
    try:
        predictor.use_instances(method, **settings)
    except UserError:
        if method != "auto":
            raise  # asked for objects this network cannot give; with auto, such a network is scored without

    class_names = predictor.checkpoint.class_names
    items, source = labelled_images(cfg, predictor)
    target = (user_path(cfg.output) if cfg.output else run_dir) / "metrics.json"
    refuse_to_overwrite([target], cfg.overwrite)
    console.print(f"[bold]{predictor.describe()}[/]")
    console.print(f"[bold]checkpoint[/]: {checkpoints} · [bold]images[/]: {len(items)} from {source}")

    started = time.perf_counter()
    board = score_images(predictor, items)
    seconds = time.perf_counter() - started

    mean = board.summary()
    rows = [(name, scores) for name, scores in board.per_image.items()] + [("all", mean)]
    console.print(metrics_table(f"scores of {name} ({len(items)} images)", rows, class_names))
    console.print(
        "all: pixel error, Dice and IoU over every pixel of the set; Rand error and V_info: mean of the images"
        + (
            "; AP, PQ: objects matched one to one, pooled over the set; count error: mean of the images"
            if board.objects is not None
            else ""
        )
    )
    report = {
        "status": "completed",
        "checkpoint": str(paths[0]) if len(paths) == 1 else [str(path) for path in paths],
        "source": source,
        "images": len(items),
        "settings": {
            "threshold": predictor.threshold,
            "tile_size": predictor.tiling.tile,
            "overlap": predictor.tiling.overlap,
            "margin": predictor.tiling.margin,
            "tta": predictor.tiling.tta,
            "backend": predictor.network.name,
            "precision": predictor.fast.name,
        },
        "mean": finite_or_none(mean),
        "per_image": {name: finite_or_none(scores) for name, scores in board.per_image.items()},
        "objects": None if board.objects is None else object_report(board.objects, predictor),
        "seconds": round(seconds, 3),
    }
    write_text_atomic(target, to_json(report, indent=2), durable=True)
    log.info("evaluated %d images with %s: %s", len(items), checkpoints, to_json(report["mean"]))
    console.print(f"metrics: {target}")
    return report


def main(argv: list[str]) -> None:
    run_command("evaluate", evaluate, argv)
