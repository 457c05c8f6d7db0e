"""`unetseg evaluate`: predict labelled images with a checkpoint (the same Predictor as `unetseg
predict`) and score them as the ISBI 2012 challenge does; print a table, write metrics.json."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from unetseg.atomic import write_text_atomic
from unetseg.config import EvaluateConfig, check_evaluate, to_typed
from unetseg.console import console, metrics_table, progress_bars
from unetseg.data.dataset import LabelledImages, load_pairs, load_splits
from unetseg.engine.predictor import Predictor
from unetseg.engine.scores import ScoreBoard
from unetseg.errors import UserError
from unetseg.paths import user_path
from unetseg.runner import run_command

from .inference import build_predictor, describe, find_checkpoint

log = logging.getLogger(__name__)


def labelled_images(cfg: EvaluateConfig, predictor: Predictor) -> tuple[LabelledImages, str]:
    """The images to score, normalised as the checkpoint was trained, and a description of them."""
    spec, normalizer = predictor.checkpoint.model, predictor.checkpoint.normalization
    if cfg.input is not None and cfg.labels is not None:
        images, labels = user_path(cfg.input), user_path(cfg.labels)
        items = load_pairs(
            images, labels, spec.in_channels, spec.num_classes, cfg.data.label_encoding.value, normalizer
        )
        return items, f"{images} with labels {labels}"
    train, val = load_splits(cfg.data, spec.in_channels, spec.num_classes, normalizer)
    chosen = {
        "val": val,
        "train": train,
        "all": LabelledImages(
            *(
                a + b
                for a, b in zip(
                    (train.images, train.labels, train.names), (val.images, val.labels, val.names), strict=True
                )
            )
        ),
    }[cfg.split]
    where = cfg.data.root if cfg.data.root is not None else "synthetic data"
    return chosen, f"{where} · split {cfg.split} ({', '.join(chosen.names[:6])}{' ...' if len(chosen) > 6 else ''})"


def finite_or_none(scores: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: an undefined score (e.g. a Rand error without true cells) is written as null."""
    return {key: (None if math.isnan(value) else round(value, 6)) for key, value in scores.items()}


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    typed: EvaluateConfig = to_typed(cfg)
    check_evaluate(typed)
    path = find_checkpoint(typed.checkpoint, typed.runs_root)
    predictor = build_predictor(typed, path)
    class_names = predictor.checkpoint.class_names
    items, source = labelled_images(typed, predictor)
    output = user_path(typed.output) if typed.output else run_dir
    target = output / "metrics.json"
    if target.exists() and not typed.overwrite:
        raise UserError(f"{target} already exists: choose another output= or set overwrite=true")
    console.print(f"[bold]{describe(predictor)}[/]")
    console.print(f"[bold]checkpoint[/]: {path} · [bold]images[/]: {len(items)} from {source}")

    board = ScoreBoard(class_names)
    started = time.perf_counter()
    with progress_bars() as progress:
        task = progress.add_task("images", total=len(items), status="")
        for name, image, label in zip(items.names, items.images, items.labels, strict=True):
            classes = predictor.classes_of(predictor.probabilities_of(image))
            board.add(name, classes, label)
            progress.update(task, advance=1, status=name)
    seconds = time.perf_counter() - started
    mean = board.summary()
    rows = [(name, scores) for name, scores in board.per_image.items()] + [("all", mean)]
    console.print(metrics_table(f"scores of {path.name} ({len(items)} images)", rows, class_names))
    console.print(
        "all: pixel error, Dice and IoU over every pixel of the set; Rand error and V_info: mean of the images"
    )
    report = {
        "status": "completed",
        "checkpoint": str(path),
        "source": source,
        "images": len(items),
        "settings": {
            "threshold": predictor.threshold,
            "tile_size": predictor.tiling.tile,
            "overlap": predictor.tiling.overlap,
            "tta": predictor.tiling.tta,
            "precision": predictor.fast.name,
        },
        "mean": finite_or_none(mean),
        "per_image": {name: finite_or_none(scores) for name, scores in board.per_image.items()},
        "seconds": round(seconds, 3),
    }
    write_text_atomic(target, json.dumps(report, indent=2))
    log.info("evaluated %d images with %s: %s", len(items), path, json.dumps(report["mean"]))
    console.print(f"metrics: {target}")
    return report


def main(argv: list[str]) -> None:
    run_command("evaluate", evaluate, argv)
