"""What predict writes for each input, all named from the input's stem in the output folder.

An ordinary image (``<stem>.*``) gives:

- ``mask``: ``<stem>.png``: 0/255 for a binary network; for several classes an indexed (palette) PNG whose
  pixel values are the class ids, shown in colour, plus ``<stem>_ids.png``, the same ids as plain 8-bit grey
- ``probability``: ``<stem>_probability.png``, the foreground probability × 65535 as 16-bit PNG
  (``probability_format=png``) or ``<stem>_probability.tif`` as float32 (``tiff``); one
  ``<stem>_probability_<class>.*`` per class for several classes
- ``overlay``: ``<stem>_overlay.png``, the input in grey with each class > 0 tinted (or outlined)
- ``instances``: ``<stem>_instances.tif``, the objects as ids 1..n (0 = background), uint16, or uint32 past
  65,535 objects (unetseg.objects.instances)
- ``objects``: ``<stem>_objects.csv``, one row per object: area, centroid, box, shape and intensities
  (unetseg.objects.measure)

A multi-page TIFF stack gives the same files as multi-page TIFFs, one page per input page: ``<stem>.tif``
(and ``<stem>_ids.tif``), ``<stem>_probability[_<class>].tif`` (always float32), ``<stem>_overlay.tif``,
``<stem>_instances.tif`` (uint32), and one ``<stem>_objects.csv`` for the whole stack with a page column.
Every file appears atomically; a stack's files appear once their last page is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unetseg.inference.predictor import Segmentation
from unetseg.io.atomic import write_text_atomic
from unetseg.io.png import class_colours, write_png_atomic
from unetseg.io.tiff import tiff_writer
from unetseg.objects.measure import columns, csv_text, measure_objects
from unetseg.runtime.errors import UserError

OUTPUT_KINDS = ("mask", "probability", "overlay", "instances", "objects")  # what save= may list
OBJECT_KINDS = ("instances", "objects")  # the outputs that need objects made
_OVERLAY_ROWS = 512  # overlays are drawn this many rows at a time (float temporaries stay small)


@dataclass(frozen=True)
class OutputFile:
    name: str
    content: str  # mask, ids, probability, overlay, instances or objects
    channel: int = 0  # which probability channel


@dataclass(frozen=True)
class OutputPlan:
    """The chosen outputs (``save=``) and how they are encoded."""

    kinds: tuple[str, ...]
    class_names: tuple[str, ...]
    num_outputs: int  # probability channels: 1 (foreground) for a binary network, else one per class
    probability_format: str = "png"
    overlay_style: str = "tint"
    overlay_classes: tuple[int, ...] | None = None  # class ids to tint; None = every class but the first
    pixel_size: float | None = None  # µm per pixel, for the objects' areas in µm²
    channels: int = 1  # of the input images: the objects' intensity columns

    @property
    def makes_objects(self) -> bool:
        return any(kind in self.kinds for kind in OBJECT_KINDS)

    @property
    def several_classes(self) -> bool:
        return self.num_outputs > 1

    def files(self, stem: str, stack: bool) -> list[OutputFile]:
        image = ".tif" if stack else ".png"
        probability = ".tif" if stack or self.probability_format == "tiff" else ".png"
        files = []
        if "mask" in self.kinds:
            files.append(OutputFile(f"{stem}{image}", "mask"))
            if self.several_classes:
                files.append(OutputFile(f"{stem}_ids{image}", "ids"))
        if "probability" in self.kinds:
            if self.several_classes:
                files += [
                    OutputFile(f"{stem}_probability_{name}{probability}", "probability", channel)
                    for channel, name in enumerate(self.class_names)
                ]
            else:
                files.append(OutputFile(f"{stem}_probability{probability}", "probability"))
        if "overlay" in self.kinds:
            files.append(OutputFile(f"{stem}_overlay{image}", "overlay"))
        if "instances" in self.kinds:
            files.append(OutputFile(f"{stem}_instances.tif", "instances"))
        if "objects" in self.kinds:
            files.append(OutputFile(f"{stem}_objects.csv", "objects"))
        return files

    def names(self, stem: str, stack: bool) -> list[str]:
        return [file.name for file in self.files(stem, stack)]

    def probability_dtype(self, stack: bool) -> type[np.generic] | None:
        """How probabilities are kept while an image is predicted: only if written, and as written."""
        if "probability" not in self.kinds:
            return None
        return np.float32 if stack or self.probability_format == "tiff" else np.uint16

    def palette(self, file: OutputFile) -> np.ndarray | None:
        return class_colours(self.num_outputs) if file.content == "mask" and self.several_classes else None

    def render(self, file: OutputFile, result: Segmentation) -> np.ndarray:
        """One page of one output file."""
        if file.content == "mask" and not self.several_classes:
            return result.classes * np.uint8(255)
        if file.content in ("mask", "ids"):
            return result.classes
        if file.content == "probability":
            assert result.probabilities is not None
            return result.probabilities[file.channel]
        if file.content == "instances":
            assert result.instances is not None
            return result.instances
        classes = max(2, self.num_outputs)
        shown = self.overlay_classes if self.overlay_classes is not None else tuple(range(1, classes))
        return overlay(result, self.overlay_style, classes, shown)


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


def overlay(result: Segmentation, style: str, num_classes: int, shown: tuple[int, ...]) -> np.ndarray:
    """(H, W, 3) uint8 BGR: the input in grey, the ``shown`` classes tinted at 40% (``tint``; class 0 in
    red, e.g. ISBI's membranes), or every class border drawn in the class colour (``outline``)."""
    classes = result.classes
    height, width = classes.shape
    colours = class_colours(num_classes).astype(np.float32)
    colours[0] = (255, 40, 40)  # class 0 is black in label maps; a tint needs a colour
    colours = colours[:, ::-1]  # BGR
    picture = np.empty((height, width, 3), np.uint8)
    for start in range(0, height, _OVERLAY_ROWS):
        rows = slice(start, min(height, start + _OVERLAY_ROWS))
        grey = result.normalised_rows(rows).mean(axis=0) * 255
        block = np.repeat(grey[..., None], 3, axis=2)
        if style == "outline":
            edges, edge_class = _borders(classes, rows)
            block[edges] = colours[edge_class[edges]]
        else:
            ids = classes[rows]
            block += (0.4 * (colours[ids] - block)) * np.isin(ids, shown)[..., None]
        picture[rows] = np.clip(block, 0, 255)
    return picture


def _borders(classes: np.ndarray, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ``rows`` next to another class (3×3 neighbourhood), and the larger class id there."""
    low, high = max(0, rows.start - 1), min(classes.shape[0], rows.stop + 1)
    kernel = np.ones((3, 3), np.uint8)
    block = classes[low:high]
    larger = cv2.dilate(block, kernel, borderType=cv2.BORDER_REPLICATE)
    smaller = cv2.erode(block, kernel, borderType=cv2.BORDER_REPLICATE)
    inside = slice(rows.start - low, rows.stop - low)
    return (larger != smaller)[inside], larger[inside]


def object_rows(plan: OutputPlan, result: Segmentation, page: int | None = None) -> list[dict[str, float | int]]:
    """The measurements of the result's objects (one row each)."""
    assert result.instances is not None and result.image is not None
    return measure_objects(result.instances, result.image, plan.pixel_size, page)


def write_image(folder: Path, plan: OutputPlan, stem: str, result: Segmentation) -> None:
    """All chosen outputs of an ordinary image, each file written atomically."""
    for file in plan.files(stem, stack=False):
        if file.content == "objects":
            rows = object_rows(plan, result)
            write_text_atomic(folder / file.name, csv_text(rows, columns(plan.channels, plan.pixel_size, False)))
            continue
        page = plan.render(file, result)
        if file.name.endswith(".png"):
            write_png_atomic(folder / file.name, page, plan.palette(file))
        else:
            with tiff_writer(folder / file.name) as append:
                append(page)


@contextmanager
def stack_writer(
    folder: Path, plan: OutputPlan, stem: str, pages: int, page_pixels: int
) -> Iterator[Callable[[Segmentation], None]]:
    """``add(result)`` appends one page to every output stack; the stacks appear when the block completes,
    then the one objects CSV of the whole stack. Object ids are uint32 in a stack (one dtype for all pages).

    ``page_pixels`` (of the first page) sizes the files: from 2 GiB on they are written as BigTIFF.
    """
    files = plan.files(stem, stack=True)
    tiffs = [file for file in files if file.content != "objects"]
    table = next((file for file in files if file.content == "objects"), None)
    all_rows: list[dict[str, float | int]] = []
    with ExitStack() as stack:
        appenders = []
        for file in tiffs:
            bytes_per_pixel = {"probability": 4, "overlay": 3, "instances": 4}.get(file.content, 1)
            big = pages * page_pixels * bytes_per_pixel >= 2**31
            appenders.append(stack.enter_context(tiff_writer(folder / file.name, bigtiff=big)))
        page_number = 0

        def add(result: Segmentation) -> None:
            nonlocal page_number
            page_number += 1
            for file, append in zip(tiffs, appenders, strict=True):
                page = plan.render(file, result)
                if file.content == "instances":
                    page = page.astype(np.uint32)  # one dtype for every page: readers take a stack as one array
                append(page, plan.palette(file))
            if table is not None:
                all_rows.extend(object_rows(plan, result, page_number))

        yield add
    if table is not None:  # once the stacks are in place
        write_text_atomic(folder / table.name, csv_text(all_rows, columns(plan.channels, plan.pixel_size, True)))
