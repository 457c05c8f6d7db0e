"""Multi-page TIFF stacks: page headers, decoding one page at a time, writing a stack one page at a time.

tifffile reads the page directory, and decodes the pages whose compression it handles without extra
packages (none, deflate, LZMA, PackBits) in grayscale or RGB: unlike OpenCV's TIFF reader, it reports
corrupt page data instead of returning garbage. Other pages (LZW or JPEG, which tifffile leaves to the
imagecodecs package; palette or inverted grey) are decoded by OpenCV, as single images always were.
Pages come out in OpenCV's layout, (H, W) or (H, W, samples) in BGR order, so one conversion
(:func:`unetseg.io.images.as_channels`) serves every reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import tifffile
from tifffile import EXTRASAMPLE, PHOTOMETRIC, TIFF

from unetseg.io.atomic import atomic_open
from unetseg.io.limits import opencv_failure
from unetseg.runtime.errors import UserError

TIFF_SUFFIXES = (".tif", ".tiff")
_ALPHA = (EXTRASAMPLE.ASSOCALPHA, EXTRASAMPLE.UNASSALPHA)


def open_tiff(path: Path) -> tifffile.TiffFile | None:
    """The file's page directory, or None when tifffile cannot parse it (OpenCV then gets to try)."""
    try:
        return tifffile.TiffFile(path)
    except Exception:  # tifffile raises many types for files it does not understand
        return None


def colour_samples(page: tifffile.TiffPage | tifffile.TiffFrame) -> int:
    """Samples per pixel, not counting an alpha channel: 1 for grey, 3 for RGB."""
    key = page.keyframe
    return key.samplesperpixel - sum(1 for sample in key.extrasamples if sample in _ALPHA)


def _tifffile_can_decode(page: tifffile.TiffPage) -> bool:
    try:
        TIFF.DECOMPRESSORS[page.compression]
    except KeyError:
        return False
    return page.photometric in (PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.RGB) and set(page.axes) <= set("YXS")


def _opencv_layout(data: np.ndarray, page: tifffile.TiffPage) -> np.ndarray:
    if page.axes.startswith("S"):  # planar samples → (H, W, S)
        data = np.moveaxis(data, 0, -1)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.ndim == 3 and page.photometric == PHOTOMETRIC.RGB:
        data = np.concatenate([data[..., 2::-1], data[..., 3:]], axis=-1)  # RGB[A] → BGR[A]
    return data


def decode_page(tif: tifffile.TiffFile, index: int, where: str) -> np.ndarray:
    """Page ``index`` in OpenCV's layout; ``where`` names it in the one-line error. Readers call it through
    :func:`unetseg.io.images.decode`, which checks the page's size first and its values after."""
    page = tif.pages[index]
    if isinstance(page, tifffile.TiffPage) and _tifffile_can_decode(page):
        try:
            return _opencv_layout(page.asarray(), page)
        except Exception as error:
            raise UserError(f"cannot decode {where}: {error}; the page is corrupt: replace the file") from None
    try:
        ok, pages = cv2.imreadmulti(str(tif.filehandle.path), start=index, count=1, flags=cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(error):  # more pixels than OpenCV decodes: say so, not "corrupt"
            raise opencv_failure(error, where) from None
        ok, pages = False, ()
    if not ok or not pages:
        raise UserError(f"cannot decode {where}: the page is corrupt or in an unsupported format; replace the file")
    return pages[0]


def tiff_options(page: np.ndarray, palette: np.ndarray | None = None) -> dict[str, object]:
    """How tifffile writes one page: grey, BGR → RGB colour, or class ids with an (N, 3) RGB palette."""
    options: dict[str, object] = {"compression": "zlib", "metadata": None}  # metadata None: one plain series
    if palette is not None:
        colormap = np.zeros((3, 256), np.uint16)
        colormap[:, : len(palette)] = palette.T.astype(np.uint16) * 257
        return {**options, "photometric": "palette", "colormap": colormap}
    return {**options, "photometric": "rgb" if page.ndim == 3 else "minisblack"}


@contextmanager
def tiff_writer(path: Path, bigtiff: bool = False) -> Iterator[Callable[..., None]]:
    """``append(page, palette=None)`` adds a page; the file appears at ``path`` only once the block
    completes (an error leaves no half-written stack). BGR colour pages are stored as RGB."""
    with atomic_open(path) as handle, tifffile.TiffWriter(handle, bigtiff=bigtiff) as tiff:

        def append(page: np.ndarray, palette: np.ndarray | None = None) -> None:
            data = page[..., ::-1] if page.ndim == 3 else page
            tiff.write(data, **tiff_options(page, palette))

        yield append
