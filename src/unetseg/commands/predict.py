"""`unetseg predict`: write a 0/255 PNG mask for every image in `input`, never into the input folder."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from unetseg.config import PredictConfig, check_predict, to_typed
from unetseg.console import console, progress_bars
from unetseg.data.io import IMAGE_SUFFIXES, list_images, read_image
from unetseg.distributed import World, barrier, broadcast_from_main, current_world
from unetseg.distributed import any_rank as distributed_any
from unetseg.engine.checkpoint import load_checkpoint
from unetseg.engine.device import resolve_device
from unetseg.engine.outputs import output_names, write_outputs
from unetseg.engine.precision import choose_fast_path
from unetseg.engine.predictor import Predictor, Tiling, newest_checkpoint
from unetseg.errors import EXIT_USER_ERROR, UserError
from unetseg.paths import user_path
from unetseg.runner import run_command

log = logging.getLogger(__name__)


def input_images(path: Path) -> tuple[list[Path], Path]:
    """The images to predict and the folder they live in."""
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"input {path} is not an image ({', '.join(IMAGE_SUFFIXES)})")
        return [path], path.parent
    if not path.is_dir():
        raise UserError(f"input {path} does not exist: give an image file or a folder of images")
    images = list_images(path)
    if not images:
        nested = [sub for sub in sorted(path.iterdir()) if sub.is_dir() and list_images(sub)]
        hint = f"its subfolder {nested[0].name}/ has images: use input={nested[0]}" if nested else "check input="
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}: {hint}")
    return images, path


def check_output_folder(images: list[Path], input_dir: Path, output: Path) -> None:
    """Refuse an output folder inside the input folder and two inputs that would write the same file."""
    if output == input_dir or input_dir in output.parents:
        raise UserError(
            f"output {output} is inside the input folder {input_dir}: masks are never written among the "
            "inputs; choose another output= (or leave it unset for a new run directory)"
        )
    writers: dict[str, Path] = {}
    for image in images:
        name = f"{image.stem}.png"
        if name in writers:
            raise UserError(f"{writers[name].name} and {image.name} would both write {name}: rename one")
        writers[name] = image


def refuse_existing(images: list[Path], output: Path, overwrite: bool, names: Callable[[str], list[str]]) -> None:
    """Existing output files are replaced only with ``overwrite``; checked before anything is written."""
    existing = [name for image in images for name in names(image.stem) if (output / name).exists()]
    if existing and not overwrite:
        raise UserError(
            f"{len(existing)} output file(s) already exist in {output} (e.g. {existing[0]}): "
            "choose another output= or set overwrite=true"
        )


def check_inputs_everywhere(images: list[Path], channels: int, world: World) -> None:
    """Decode every input before the first mask is written, on every rank: if any rank finds a bad
    file, that rank reports it and all ranks stop."""
    problem: UserError | None = None
    try:
        for image_path in images:
            read_image(image_path, channels)
    except UserError as error:
        problem = error
    if distributed_any(problem is not None):
        if problem is not None:
            raise problem
        sys.exit(EXIT_USER_ERROR)  # another rank reported the bad file


def predict(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    typed: PredictConfig = to_typed(cfg)
    check_predict(typed)
    assert typed.input is not None
    images, input_dir = input_images(user_path(typed.input))
    output = user_path(typed.output) if typed.output else run_dir
    check_output_folder(images, input_dir, output)

    if typed.checkpoint:
        checkpoint_path = user_path(typed.checkpoint)
    else:
        # Under torchrun, rank 0 chooses, so that a run finishing meanwhile cannot split the ranks.
        checkpoint_path = Path(str(broadcast_from_main(str(newest_checkpoint(user_path(typed.runs_root))))))
        console.print(f"checkpoint not given: using the newest, {checkpoint_path}")
    world = current_world()
    device = resolve_device(typed.device)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    fast = choose_fast_path(device, typed.precision.value, typed.channels_last)
    ranks = f" · {world.size} processes, each predicts 1/{world.size} of the files" if world.distributed else ""
    console.print(f"[bold]{fast.describe()}{ranks}[/]")
    tiling = Tiling(typed.tile_size, typed.overlap, typed.gaussian, typed.batch_size, typed.tta.value)
    checkpoint = load_checkpoint(checkpoint_path)
    predictor = Predictor(checkpoint, fast, typed.threshold, tiling)
    kinds = list(typed.save)
    class_names = checkpoint.class_names

    def names(stem: str) -> list[str]:
        return output_names(stem, kinds, class_names, checkpoint.model.num_classes)

    refuse_existing(images, output, typed.overwrite, names)

    # Under torchrun each rank takes every world.size-th file; alone, this is every file.
    shard = images[world.rank :: world.size]
    check_inputs_everywhere(shard, predictor.in_channels, world)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with progress_bars() as progress:
        task = progress.add_task("images", total=len(shard), status="")
        for image_path in shard:
            normalised = predictor.normalise(read_image(image_path, predictor.in_channels))
            probabilities = predictor.probabilities_of(normalised)
            classes = predictor.classes_of(probabilities)
            write_outputs(
                output,
                image_path.stem,
                kinds,
                normalised,
                probabilities,
                classes,
                predictor.to_png_values(classes),
                class_names,
            )
            progress.update(task, advance=1, status=image_path.name)
    barrier()  # the summary below counts every rank's masks
    seconds = time.perf_counter() - started
    summary = (
        f"predicted {len(images)} image(s) in {seconds:.1f} s "
        f"({len(images) / max(seconds, 1e-9):.2f} images/s) → {output}"
    )
    log.info("%s (checkpoint %s)", summary, checkpoint_path)
    console.print(summary)
    return {"images": len(images), "seconds": seconds, "output": str(output)}


def main(argv: list[str]) -> None:
    run_command("predict", predict, argv)
