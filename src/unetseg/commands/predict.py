"""`unetseg predict`: masks (and, if asked, probability maps and overlays) for every image that `input`
names, never written into the input folders.

Every input page is decoded and checked before the first output is written; pages are then read one
ahead in a background thread while the network runs, predicted band by band (see Predictor.segment), and
written atomically. A multi-page TIFF is read and written one page at a time.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import Progress, TaskID

from unetseg.config import PredictConfig, check_predict, to_typed
from unetseg.console import console, progress_bars
from unetseg.data.inputs import ImageSource, find_inputs, open_source, read_pages
from unetseg.data.read_ahead import read_ahead
from unetseg.distributed import all_reduce_sum, barrier, current_world
from unetseg.distributed import any_rank as distributed_any
from unetseg.engine.outputs import OutputPlan, stack_writer, write_image
from unetseg.engine.predictor import Predictor
from unetseg.errors import EXIT_USER_ERROR, UserError
from unetseg.paths import user_path
from unetseg.runner import run_command

from .inference import build_predictor, describe, find_checkpoint

log = logging.getLogger(__name__)


def check_output_folder(images: list[Path], input_dirs: list[Path], output: Path) -> None:
    """Refuse an output folder inside an input folder, and two inputs that would write the same files."""
    for input_dir in input_dirs:
        if output == input_dir or input_dir in output.parents:
            raise UserError(
                f"output {output} is inside the input folder {input_dir}: masks are never written among the "
                "inputs; choose another output= (or leave it unset for a new run directory)"
            )
    writers: dict[str, Path] = {}
    for image in images:
        if image.stem in writers:
            first = writers[image.stem]
            raise UserError(
                f"{first} and {image} have the same stem and would write the same {image.stem}* files: rename one"
            )
        writers[image.stem] = image


def refuse_existing(sources: list[ImageSource], output: Path, overwrite: bool, plan: OutputPlan) -> None:
    """Existing output files are replaced only with ``overwrite``; checked before anything is written."""
    names = [name for source in sources for name in plan.names(source.stem, source.stack)]
    existing = [name for name in names if (output / name).exists()]
    if existing and not overwrite:
        raise UserError(
            f"{len(existing)} output file(s) already exist in {output} (e.g. {existing[0]}): "
            "choose another output= or set overwrite=true"
        )


def check_inputs_everywhere(sources: list[ImageSource], channels: int, device: torch.device) -> None:
    """Decode every page before the first output is written, on every rank (one page in memory at a
    time): if any rank finds a bad file or page, that rank reports it and all ranks stop."""
    problem: UserError | None = None
    try:
        for source in sources:
            for _ in read_pages(source, channels):
                pass
    except UserError as error:
        problem = error
    if distributed_any(problem is not None, device):
        if problem is not None:
            raise problem
        sys.exit(EXIT_USER_ERROR)  # another rank reported the bad file


def all_pages(sources: list[ImageSource], channels: int) -> Iterator[np.ndarray]:
    for source in sources:
        yield from read_pages(source, channels)


class Bars:
    """Progress over files and over the tiles of the image at hand."""

    def __init__(self, progress: Progress, files: int) -> None:
        self.progress = progress
        self.files: TaskID = progress.add_task("files", total=files, status="")
        self.tiles: TaskID = progress.add_task("tiles", total=None, status="")

    def start_page(self, name: str, tiles: int) -> Callable[[int], None]:
        self.progress.update(self.files, status=name)
        self.progress.reset(self.tiles, total=tiles)
        return lambda count: self.progress.advance(self.tiles, count)

    def file_done(self) -> None:
        self.progress.advance(self.files)


def predict_source(
    source: ImageSource,
    pages: Iterator[np.ndarray],
    predictor: Predictor,
    plan: OutputPlan,
    output: Path,
    bars: Bars,
) -> int:
    """Predict and write every page of one input (taken from ``pages``); returns the pixels predicted."""
    pixels = 0
    probability_dtype = plan.probability_dtype(source.stack)
    with ExitStack() as open_stacks:
        add_page: Callable[..., None] | None = None
        for index in range(source.pages):
            image = next(pages)
            _, height, width = image.shape
            name = f"{source.path.name} page {index + 1}/{source.pages}" if source.stack else source.path.name
            on_tiles = bars.start_page(name, predictor.tile_count(height, width))
            result = predictor.segment(image, probability_dtype, on_tiles)
            if not source.stack:
                write_image(output, plan, source.stem, result)
            else:
                if add_page is None:
                    writer = stack_writer(output, plan, source.stem, source.pages, height * width)
                    add_page = open_stacks.enter_context(writer)
                add_page(result)
            pixels += height * width
            del image, result  # not alive while the next page is predicted
    bars.file_done()
    return pixels


def overlay_ids(names: list[str] | None, class_names: list[str]) -> tuple[int, ...] | None:
    """The class ids that ``overlay_classes`` names (None: the default, every class but the first)."""
    if names is None:
        return None
    unknown = [name for name in names if name not in class_names]
    if unknown:
        raise UserError(
            f"overlay_classes={list(names)}: {', '.join(unknown)} is not a class of this checkpoint; "
            f"its classes are {', '.join(class_names)}"
        )
    return tuple(class_names.index(name) for name in names)


def predict(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    typed: PredictConfig = to_typed(cfg)
    check_predict(typed)
    assert typed.input is not None
    images, input_dirs = find_inputs(typed.input)
    output = user_path(typed.output) if typed.output else run_dir
    check_output_folder(images, input_dirs, output)

    checkpoint_path = find_checkpoint(typed.checkpoint, typed.runs_root)
    world = current_world()
    predictor = build_predictor(typed, checkpoint_path)
    checkpoint, device = predictor.checkpoint, predictor.fast.device
    ranks = f" · {world.size} processes, each predicts 1/{world.size} of the files" if world.distributed else ""
    console.print(f"[bold]{describe(predictor)}{ranks}[/]")
    plan = OutputPlan(
        tuple(typed.save),
        tuple(checkpoint.class_names),
        predictor.num_outputs,
        typed.probability_format.value,
        typed.overlay_style.value,
        overlay_ids(typed.overlay_classes, checkpoint.class_names),
    )
    sources = [open_source(image) for image in images]
    refuse_existing(sources, output, typed.overwrite, plan)

    # Under torchrun each rank takes every world.size-th file; alone, this is every file.
    shard = sources[world.rank :: world.size]
    check_inputs_everywhere(shard, predictor.in_channels, device)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pixels = 0
    with progress_bars() as progress, closing(read_ahead(all_pages(shard, predictor.in_channels))) as pages:
        bars = Bars(progress, len(shard))
        for source in shard:
            pixels += predict_source(source, pages, predictor, plan, output, bars)
    barrier()  # the summary below counts every rank's images
    seconds = time.perf_counter() - started
    counts = [sum(source.pages for source in shard), pixels]
    totals = all_reduce_sum(torch.tensor(counts, dtype=torch.float64, device=device)).cpu()  # nccl: on the GPU
    summary = end_line(int(totals[0]), len(sources), float(totals[1]) / 1e6, seconds, output)
    log.info("%s (checkpoint %s)", summary, checkpoint_path)
    console.print(summary)
    return {
        "images": int(totals[0]),
        "files": len(sources),
        "megapixels": float(totals[1]) / 1e6,
        "seconds": seconds,
        "output": str(output),
    }


def end_line(images: int, files: int, megapixels: float, seconds: float, output: Path) -> str:
    """e.g. ``predicted 40 image(s) from 2 file(s) in 12.0 s: 3.33 images/s, 0.873 megapixels/s → out``
    (rates to 3 significant digits: an 8k image takes minutes on a CPU)."""
    rate = max(seconds, 1e-9)
    source = f" from {files} file(s)" if files != images else ""
    return (
        f"predicted {images} image(s){source} in {seconds:.1f} s: {images / rate:.3g} images/s, "
        f"{megapixels / rate:.3g} megapixels/s → {output}"
    )


def main(argv: list[str]) -> None:
    run_command("predict", predict, argv)
