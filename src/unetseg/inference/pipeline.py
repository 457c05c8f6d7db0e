"""Predict's pipeline: sources → (read ahead) → predictor (sliding window, blend, decision) → writers.

Every input page is decoded and checked before the first output is written; pages are then read ahead in a
background thread while the network runs, and written atomically. Pages that one pass covers (an image no
larger than a tile) are grouped, up to ``batch_size`` of the same shape and across files, into one forward
pass; a larger page is predicted band by band on its own (see Predictor.segment). A multi-page TIFF is read
and written one page at a time. Under torchrun each rank predicts every world.size-th file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress, TaskID

from unetseg.inference.predictor import Predictor, Segmentation
from unetseg.inference.read_ahead import read_ahead
from unetseg.inference.sources import ImageSource, read_pages
from unetseg.inference.writers import OutputPlan, stack_writer, write_image
from unetseg.runtime.console import progress_bars
from unetseg.runtime.distributed import all_reduce_sum, any_rank, barrier, current_world
from unetseg.runtime.errors import EXIT_USER_ERROR, UserError
from unetseg.runtime.interrupts import stop_if_interrupted


@dataclass(frozen=True)
class PredictSummary:
    images: int  # pages, over every rank
    files: int
    megapixels: float
    seconds: float
    output: Path

    def line(self) -> str:
        """e.g. ``predicted 40 image(s) from 2 file(s) in 12.0 s: 3.33 images/s, 0.873 megapixels/s → out``
        (rates to 3 significant digits: an 8k image takes minutes on a CPU)."""
        rate = max(self.seconds, 1e-9)
        source = f" from {self.files} file(s)" if self.files != self.images else ""
        return (
            f"predicted {self.images} image(s){source} in {self.seconds:.1f} s: {self.images / rate:.3g} images/s, "
            f"{self.megapixels / rate:.3g} megapixels/s → {self.output}"
        )


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


def output_files(sources: list[ImageSource], plan: OutputPlan, output: Path) -> list[Path]:
    """Every file predict will write, for the overwrite check before anything is written."""
    return [output / name for source in sources for name in plan.names(source.stem, source.stack)]


def predict_sources(sources: list[ImageSource], predictor: Predictor, plan: OutputPlan, output: Path) -> PredictSummary:
    """Predict and write every page of ``sources`` (this rank's share under torchrun)."""
    world = current_world()
    shard = sources[world.rank :: world.size]
    check_inputs_everywhere(shard, predictor.in_channels, predictor.fast.device)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pixels = files_done = 0
    # One page read ahead (not a batch's worth: a folder of 8k images would hold six of them); a batch of
    # small pages waits a few milliseconds for its last decodes, against a forward pass of a second.
    pages = read_ahead(numbered_pages(shard, predictor.in_channels))
    with progress_bars() as progress, closing(pages), Outputs(output, plan, Bars(progress, len(shard))) as outputs:
        for group in batches(pages, predictor):
            if len(group) == 1:
                page = group[0]
                on_tiles = outputs.bars.start_page(page.name, predictor.tile_count(*page.image.shape[1:]))
                results = [predictor.segment(page.image, plan.probability_dtype(page.source.stack), on_tiles)]
            else:
                on_tiles = outputs.bars.start_page(f"{group[0].name} and {len(group) - 1} more", len(group))
                dtype = plan.probability_dtype(group[0].source.stack)
                results = predictor.segment_batch([page.image for page in group], dtype)
                on_tiles(len(group))  # one pass each
            for page, result in zip(group, results, strict=True):
                outputs.write(page, result)
                pixels += page.image.shape[1] * page.image.shape[2]
                if page.index == page.source.pages - 1:  # a file's outputs are complete: a signal may stop here
                    files_done += 1
                    stop_if_interrupted(
                        f"{files_done} of {len(shard)} file(s) done, their outputs in {output} complete; "
                        "the others were not started"
                    )
            del group, results, page, result  # not alive while the next batch is predicted
    barrier()  # the summary counts every rank's images
    seconds = time.perf_counter() - started
    counts = [sum(source.pages for source in shard), pixels]
    device = predictor.fast.device
    totals = all_reduce_sum(torch.tensor(counts, dtype=torch.float64, device=device)).cpu()  # nccl: on the GPU
    return PredictSummary(int(totals[0]), len(sources), float(totals[1]) / 1e6, seconds, output)


def check_inputs_everywhere(sources: list[ImageSource], channels: int, device: torch.device) -> None:
    """Decode every page before the first output is written, on every rank (one page in memory at a
    time): if any rank finds a bad file or page, that rank reports it and all ranks stop."""
    problem: UserError | None = None
    try:
        for _ in numbered_pages(sources, channels):
            pass
    except UserError as error:
        problem = error
    if any_rank(problem is not None, device):
        if problem is not None:
            raise problem
        sys.exit(EXIT_USER_ERROR)  # another rank reported the bad file


@dataclass
class Page:
    source: ImageSource
    index: int
    image: np.ndarray  # (C, H, W) raw

    @property
    def name(self) -> str:
        s = self.source
        return f"{s.path.name} page {self.index + 1}/{s.pages}" if s.stack else s.path.name

    @property
    def last(self) -> bool:
        return self.index + 1 == self.source.pages


def numbered_pages(sources: list[ImageSource], channels: int) -> Iterator[Page]:
    for source in sources:
        for index, image in enumerate(read_pages(source, channels)):
            yield Page(source, index, image)


def batches(pages: Iterator[Page], predictor: Predictor) -> Iterator[list[Page]]:
    """Pages in order, in groups that share one forward pass: up to ``batch_size`` consecutive pages (of
    any files) that one pass each covers with the same input shape and the same probability output; a
    page that needs several tiles is a group of its own."""
    group: list[Page] = []
    key: object = None
    for page in pages:
        grid = predictor.grid(*page.image.shape[1:])
        page_key = (grid.input_shape, page.source.stack) if grid.single else None
        if group and (page_key is None or page_key != key or len(group) == predictor.tiling.batch_size):
            yield group
            group = []
        if page_key is None:
            yield [page]
            continue
        group.append(page)
        key = page_key
    if group:
        yield group


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


class Outputs:
    """Writes each page's results as it comes: one set of files per image, one growing stack per multi-page
    TIFF (opened at its first page, closed after its last); a console line per page with its objects."""

    def __init__(self, output: Path, plan: OutputPlan, bars: Bars) -> None:
        self.output, self.plan, self.bars = output, plan, bars
        self.stacks = ExitStack()
        self.add_page: Callable[..., None] | None = None

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, *error: object) -> None:
        self.stacks.close()

    def write(self, page: Page, result: Segmentation) -> None:
        source = page.source
        if not source.stack:
            write_image(self.output, self.plan, source.stem, result)
        else:
            if self.add_page is None:
                _, height, width = page.image.shape
                writer = stack_writer(self.output, self.plan, source.stem, source.pages, height * width)
                self.add_page = self.stacks.enter_context(writer)
            self.add_page(result)
        if result.instances is not None:
            count = int(result.instances.max())
            mean_area = np.count_nonzero(result.instances) / max(count, 1)  # ids are 1..count
            area = f", mean area {mean_area:.1f} px" if count else ""
            if count and self.plan.pixel_size is not None:
                area += f" ({mean_area * self.plan.pixel_size**2:.3g} µm²)"
            self.bars.progress.console.print(f"{page.name}: {count} object(s){area}")
        if page.last:
            self.stacks.close()  # the stack's file is complete: written and renamed into place
            self.add_page = None
            self.bars.file_done()
