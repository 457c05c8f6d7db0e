"""What predict writes for each input, all named from the input's stem in the output folder.

An ordinary image (``<stem>.*``) gives:

- ``mask``: ``<stem>.png``: 0/255 for a binary network; for several classes an indexed (palette) PNG whose
  pixel values are the class ids, shown in colour, plus ``<stem>_ids.png``, the same ids as plain 8-bit grey
- ``probability``: ``<stem>_probability.png``, the foreground probability × 65535 as 16-bit PNG
  (``probability_format=png``) or ``<stem>_probability.tif`` as float32 (``tiff``); one
  ``<stem>_probability_<class>.*`` per class for several classes
- ``overlay``: ``<stem>_overlay.png``, the input in grey with each class > 0 tinted (or outlined)

A multi-page TIFF stack gives the same files as multi-page TIFFs, one page per input page: ``<stem>.tif``
(and ``<stem>_ids.tif``), ``<stem>_probability[_<class>].tif`` (always float32), ``<stem>_overlay.tif``.
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
from unetseg.io.png import class_colours, write_png_atomic
from unetseg.io.tiff import tiff_writer
from unetseg.runtime.errors import UserError

OUTPUT_KINDS = ("mask", "probability", "overlay")  # what save= may list
_OVERLAY_ROWS = 512  # overlays are drawn this many rows at a time (float temporaries stay small)


@dataclass(frozen=True)
class OutputFile:
    name: str
    content: str  # mask, ids, probability or overlay
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


def write_image(folder: Path, plan: OutputPlan, stem: str, result: Segmentation) -> None:
    """All chosen outputs of an ordinary image, each file written atomically."""
    for file in plan.files(stem, stack=False):
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
    """``add(result)`` appends one page to every output stack; the stacks appear when the block completes.

    ``page_pixels`` (of the first page) sizes the files: from 2 GiB on they are written as BigTIFF.
    """
    files = plan.files(stem, stack=True)
    with ExitStack() as stack:
        appenders = []
        for file in files:
            bytes_per_pixel = {"probability": 4, "overlay": 3}.get(file.content, 1)
            big = pages * page_pixels * bytes_per_pixel >= 2**31
            appenders.append(stack.enter_context(tiff_writer(folder / file.name, bigtiff=big)))

        def add(result: Segmentation) -> None:
            for file, append in zip(files, appenders, strict=True):
                append(plan.render(file, result), plan.palette(file))

        yield add
