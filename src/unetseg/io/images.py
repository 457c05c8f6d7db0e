"""Reading image files with OpenCV (TIFFs through unetseg.io.tiff, as predict reads them): 8/16-bit,
grayscale or colour, errors named by file; sizes checked from the header first and float values checked
to be finite (unetseg.io.limits). Writing PNGs: unetseg.io.png."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import tifffile

from unetseg.io.limits import DEFAULT_LIMIT, PixelLimit, opencv_failure, page_header, read_header, refuse_non_finite
from unetseg.io.tiff import TIFF_SUFFIXES, decode_page, open_tiff
from unetseg.runtime.errors import UserError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

# OpenCV logs decoder warnings on stderr for corrupt files; we report those ourselves, in one line.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def natural_key(path: Path) -> list[object]:
    """Sort key so that 2.png comes before 10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), in natural order. An entry with an image's name
    that cannot be read as a file (a dangling or looping link, a pipe, a device) is an error, not skipped: a
    set silently one image short is worse than a stop (a folder named like an image is not an image: skipped)."""
    files = []
    for path in folder.iterdir():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            if path.is_dir():
                continue
            regular = path.is_file()
        except OSError:  # a symbolic link loop
            regular = False
        if not regular:
            what = "a broken or looping link" if path.is_symlink() else "not a regular file (a pipe or a device?)"
            raise UserError(f"{path} is {what}: fix it or move it out of {folder}")
        files.append(path)
    return sorted(files, key=natural_key)


def decode(
    path: Path,
    limit: PixelLimit = DEFAULT_LIMIT,
    tif: tifffile.TiffFile | None = None,
    index: int = 0,
    where: str | None = None,
) -> np.ndarray:
    """One image (page ``index`` of ``tif``, the TIFF opened from ``path``, or else the whole file decoded by
    OpenCV) in OpenCV's layout. The one place every reader decodes through (training and evaluation images
    and labels, predict's pages): the size in the header is checked against ``limit`` before anything is
    decoded, and a float image must hold finite values only. ``where`` names the page in errors."""
    where = where or str(path)
    if tif is not None:
        limit.check(page_header(tif.pages[index]), where)
        image = decode_page(tif, index, where)
    else:
        limit.check(read_header(path), where)
        image = _opencv_decode(path, where)
    return refuse_non_finite(image, where)


def _opencv_decode(path: Path, where: str) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}; check the file's permissions") from None
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error as error:  # e.g. more pixels than OpenCV's own limit, in a header Pillow could not read
        raise opencv_failure(error, where) from None
    if image is None:
        raise UserError(f"cannot decode {where}: the file is empty, corrupt or not an image; replace or remove it")
    return image


def _decode(path: Path, limit: PixelLimit) -> np.ndarray:
    """One image in OpenCV's layout. TIFFs go through tifffile where it can read them (it reports a corrupt
    page where OpenCV returns garbage), exactly as ``unetseg predict`` reads them."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        tif = open_tiff(path)
        if tif is not None:
            with tif:
                if len(tif.pages) != 1:
                    raise UserError(
                        f"{path} is a stack of {len(tif.pages)} pages, but training and evaluation read one image "
                        "(and one label) per file: save each slice as its own file"
                    )
                return decode(path, limit, tif)
    return decode(path, limit)


def read_image(path: Path, channels: int, limit: PixelLimit = DEFAULT_LIMIT) -> np.ndarray:
    """Read an image as a (channels, H, W) array of its own dtype (uint8 or uint16 usually).

    A colour file read for a 1-channel model is converted to gray; a gray file read for a 3-channel
    model is replicated. Colour comes out RGB. An image over ``limit`` is refused from its header.
    """
    return as_channels(_decode(path, limit), channels)


def as_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """An image as OpenCV decodes it ((H, W), or (H, W, 3|4) BGR[A]) → (channels, H, W), RGB order."""
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if channels == 1:
        if image.ndim == 3:
            image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY)
        return image[None]
    if image.ndim == 2:
        return np.repeat(image[None], 3, axis=0)
    return np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))


def read_label(path: Path, limit: PixelLimit = DEFAULT_LIMIT) -> np.ndarray:
    """Read a label image as (H, W) integers; colour labels must be gray in all channels."""
    label = _decode(path, limit)
    if label.ndim == 3:
        first = label[:, :, 0]
        if not all(np.array_equal(first, label[:, :, c]) for c in range(1, min(label.shape[2], 3))):
            raise UserError(
                f"label {path} is a colour image; save masks as single-channel images (gray values = classes)"
            )
        label = first
    return label
