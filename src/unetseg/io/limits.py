"""What unetseg agrees to decode: image sizes read from file headers (nothing decoded) and checked against a
pixel limit, and decoded pixels checked to be finite. Every reader (training and evaluation data, predict's
pages) goes through :func:`unetseg.io.images.decode`, which applies both.

A PNG of a few hundred bytes can claim 100000×100000 pixels: decoding it would try to allocate 10 GB (or
30 GB as colour) before finding the data missing. The limit is checked from the header, before any decoding.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from unetseg.runtime.errors import UserError

# The default of data.max_pixels and max_pixels: 2**30 = 1,073,741,824 pixels (32768×32768), in the spirit of
# Pillow's decompression-bomb guard but 12× above Pillow's 89 Mpx, since microscopy mosaics are large: 16× the
# 8192² images the sliding-window path is measured on. It is also OpenCV's own decoding limit
# (CV_IO_MAX_IMAGE_PIXELS), so a PNG, JPEG or BMP under it is never refused by OpenCV instead. One such image
# takes 1 GiB as 8-bit grey and 4 GiB per channel once normalised to float32.
DEFAULT_MAX_PIXELS = 1 << 30
# OpenCV refuses to decode more pixels than this unless OPENCV_IO_MAX_IMAGE_PIXELS was set in the environment
# before it was imported (it reads the variable once, when loaded): TIFFs that tifffile decodes have no such limit.
OPENCV_MAX_PIXELS = 1 << 30

_PIL_LOCK = threading.Lock()  # Pillow's own limit is a module global, lifted while one header is read


@dataclass(frozen=True)
class Header:
    """What a file's header says about its (first) image, nothing decoded."""

    height: int
    width: int
    itemsize: int  # bytes per sample: 1 for 8-bit, 2 for 16-bit, 4 for 32-bit or float

    @property
    def pixels(self) -> int:
        return self.height * self.width


_PIL_ITEMSIZE = {"1": 1, "L": 1, "LA": 1, "P": 1, "PA": 1, "RGB": 1, "RGBA": 1, "CMYK": 1, "YCbCr": 1, "I": 4, "F": 4}


def page_header(page: tifffile.TiffPage | tifffile.TiffFrame) -> Header:
    """A TIFF page's size from its directory entry (tifffile reads no pixel data for it)."""
    key = page.keyframe
    height = getattr(page, "imagelength", None) or key.imagelength
    width = getattr(page, "imagewidth", None) or key.imagewidth
    return Header(int(height), int(width), max(1, key.bitspersample // 8))


def read_header(path: Path) -> Header | None:
    """The size of the image in ``path`` from its header (a TIFF's first page), or None when the header
    cannot be read (the decoder then reports the file). TIFFs through tifffile, every other format (PNG,
    JPEG, BMP, and a TIFF tifffile cannot parse) through Pillow, whose ``Image.open`` reads only the header."""
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            with tifffile.TiffFile(path) as tif:
                return page_header(tif.pages[0])
        except Exception:  # tifffile raises many types for files it does not understand: Pillow may
            pass
    try:
        from PIL import Image  # a dependency of matplotlib; imported here, as only this reads headers with it
    except ImportError:  # pragma: no cover - matplotlib requires Pillow
        return None
    with _PIL_LOCK:
        own_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # ours is checked instead, with its key
        try:
            with Image.open(path) as image:
                width, height = image.size
                mode = image.mode
        except Exception:  # unreadable or unknown header: OpenCV decodes it, or reports the file
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = own_limit
    itemsize = _PIL_ITEMSIZE.get(mode, 2 if mode.startswith("I;16") else 4 if mode.startswith(("I", "F")) else 1)
    return Header(int(height), int(width), itemsize)


@dataclass(frozen=True)
class PixelLimit:
    """The most pixels (height × width) one image or page may have; ``pixels`` None or 0: no limit of
    unetseg's own (a negative value is refused with the settings: unetseg.checks.check_max_pixels). ``key`` is
    the setting that raises it, named in the error."""

    pixels: int | None = DEFAULT_MAX_PIXELS
    key: str = "max_pixels"

    def check(self, header: Header | None, where: str) -> None:
        """UserError if the header claims more pixels than allowed; ``where`` names the file or page."""
        if header is None or not self.pixels or header.pixels <= self.pixels:
            return
        raise UserError(
            f"{where} claims {header.width}×{header.height} pixels ({header.pixels:,}), over the limit of "
            f"{self.pixels:,} ({self.key}): check the file, or raise {self.key} if it is genuine"
        )


DEFAULT_LIMIT = PixelLimit()  # what a reader given no limit applies: the default, named max_pixels


def opencv_failure(error: Exception, where: str) -> UserError:
    """A one-line error for a ``cv2.error`` raised while decoding ``where``."""
    text = str(error)
    if "CV_IO_MAX_IMAGE_PIXELS" in text:
        return UserError(
            f"cannot decode {where}: it has more than {OPENCV_MAX_PIXELS:,} pixels, OpenCV's limit; set "
            "OPENCV_IO_MAX_IMAGE_PIXELS=<pixels> in the environment to raise it, or save the image as a TIFF"
        )
    reason = next((line.strip() for line in text.splitlines() if "error:" in line), text.strip())
    reason = reason.split("error:", 1)[-1].strip() or "OpenCV failed"
    return UserError(f"cannot decode {where} ({reason}): the file is corrupt or not an image; replace or remove it")


_CHECK_ELEMENTS = 1 << 22  # finite values are checked in blocks of rows of about this many values


def refuse_non_finite(image: np.ndarray, where: str) -> np.ndarray:
    """``image`` (rows first) as it is, or a UserError naming its first NaN or infinite value: a float image
    holding one trains to a NaN network, and predicts an all-background mask."""
    if image.dtype.kind == "c":
        raise UserError(f"{where} has complex pixels ({image.dtype}): unetseg reads real-valued images; convert it")
    if image.dtype.kind != "f" or image.size == 0:
        return image
    row_values = max(1, image.size // image.shape[0])
    step = max(1, _CHECK_ELEMENTS // row_values)
    for start in range(0, image.shape[0], step):
        bad = ~np.isfinite(image[start : start + step])
        if bad.any():
            index = np.unravel_index(int(bad.argmax()), bad.shape)
            value = image[start : start + step][index]
            y, x = start + int(index[0]), int(index[1]) if image.ndim > 1 else 0
            raise UserError(f"{where} has a non-finite value ({value}) at pixel (y={y}, x={x}): fix or remove the file")
    return image
