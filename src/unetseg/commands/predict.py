"""`unetseg predict`: masks (and, if asked, probability maps and overlays) for every image that `input`
names, never written into the input folders (the pipeline: unetseg.inference.pipeline)."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from unetseg.config import PredictConfig
from unetseg.inference.pipeline import check_output_folder, output_files, predict_sources
from unetseg.inference.predictor import build_predictor, objects_settings
from unetseg.inference.sources import find_inputs, open_source
from unetseg.inference.writers import OutputPlan, overlay_ids
from unetseg.io.atomic import refuse_to_overwrite
from unetseg.io.claims import claim_folder
from unetseg.model.ensemble import checkpoint_paths
from unetseg.runner import run_command
from unetseg.runtime.console import console
from unetseg.runtime.distributed import current_world
from unetseg.runtime.interrupts import interrupts_between_steps
from unetseg.runtime.paths import user_path

log = logging.getLogger(__name__)


def predict(cfg: PredictConfig, run_dir: Path) -> dict[str, Any]:
    assert cfg.input is not None  # checks.check_predict
    images, input_dirs = find_inputs(cfg.input)
    output = user_path(cfg.output) if cfg.output else run_dir
    check_output_folder(images, input_dirs, output)
    # Under torchrun the ranks share the folder: rank 0 claims it for all of them.
    claim = claim_folder(output, "predict", "choose another output=") if current_world().is_main else nullcontext()
    with claim, interrupts_between_steps():
        return predict_into(cfg, images, output)


def predict_into(cfg: PredictConfig, images: list[Path], output: Path) -> dict[str, Any]:
    """Predict ``images`` into the claimed folder ``output``."""
    checkpoints = checkpoint_paths(cfg.checkpoint, cfg.runs_root)
    predictor = build_predictor(cfg, checkpoints, cfg.checkpoint)
    class_names = predictor.checkpoint.class_names
    plan = OutputPlan(
        tuple(cfg.save),
        tuple(class_names),
        predictor.num_outputs,
        cfg.probability_format.value,
        cfg.overlay_style.value,
        overlay_ids(cfg.overlay_classes, class_names),
        cfg.pixel_size,
        predictor.in_channels,
    )
    if plan.makes_objects:
        method, settings = objects_settings(cfg)
        predictor.use_instances(method, **settings)
    world = current_world()
    ranks = f" · {world.size} processes, each predicts 1/{world.size} of the files" if world.distributed else ""
    console.print(f"[bold]{predictor.describe()}{ranks}[/]")
    sources = [open_source(image, cfg.max_pixels) for image in images]
    refuse_to_overwrite(output_files(sources, plan, output), cfg.overwrite)

    summary = predict_sources(sources, predictor, plan, output)
    log.info("%s (checkpoint %s)", summary.line(), ", ".join(map(str, checkpoints)))
    console.print(summary.line())
    return {**asdict(summary), "output": str(summary.output)}


def main(argv: list[str]) -> None:
    run_command("predict", predict, argv)
