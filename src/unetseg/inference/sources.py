"""What predict reads: a file, a folder or a glob pattern of images, each an ordinary image (one page) or
a multi-page TIFF stack, read one page at a time so a stack is never held whole."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetseg.io.images import IMAGE_SUFFIXES, as_channels, decode, list_images, natural_key, read_image
from unetseg.io.limits import DEFAULT_LIMIT, DEFAULT_MAX_PIXELS, PixelLimit, page_header, read_header
from unetseg.io.tiff import TIFF_SUFFIXES, colour_samples, open_tiff
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import user_path

_GLOB_CHARACTERS = set("*?[")


@dataclass(frozen=True)
class ImageSource:
    path: Path
    pages: int = 1
    tiff: bool = False  # read through tifffile (page by page), else OpenCV
    limit: PixelLimit = DEFAULT_LIMIT  # the most pixels a page may have (the max_pixels setting)

    @property
    def stack(self) -> bool:
        """A multi-page TIFF: its outputs are stacks too."""
        return self.pages > 1

    @property
    def stem(self) -> str:
        return self.path.stem

    def page_name(self, index: int) -> str:
        return f"page {index + 1}/{self.pages} of {self.path}" if self.stack else str(self.path)


def find_inputs(text: str) -> tuple[list[Path], list[Path]]:
    """The image files ``input=`` names (a file, a folder, or a glob pattern such as ``data/*.tif`` or
    ``data/**/*.png``) and the folders they are in."""
    path = user_path(text)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"input {path} is not an image ({', '.join(IMAGE_SUFFIXES)})")
        return [path], [path.parent]
    if path.is_dir():
        images = list_images(path)
        if not images:
            nested = [sub for sub in sorted(path.iterdir()) if sub.is_dir() and list_images(sub)]
            hint = f"its subfolder {nested[0].name}/ has images: use input={nested[0]}" if nested else "check input="
            raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}: {hint}")
        return images, [path]
    if _GLOB_CHARACTERS & set(text):
        matches = [Path(match) for match in glob.glob(str(path), recursive=True)]
        images = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise UserError(
                f"input={text} matches no images ({', '.join(IMAGE_SUFFIXES)}): check the pattern "
                f"({len(matches)} match(es) in all)"
            )
        images.sort(key=lambda image: (str(image.parent), natural_key(image)))
        return images, sorted({image.parent for image in images})
    raise UserError(f"input {path} does not exist: give an image file, a folder of images or a glob pattern")


def open_source(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageSource:
    """Count a TIFF's pages; every other file is one page. Each page's size is checked against
    ``max_pixels`` (the max_pixels setting) from the headers alone, so an oversized page is reported before
    any file is decoded."""
    limit = PixelLimit(max_pixels, "max_pixels")
    if path.suffix.lower() in TIFF_SUFFIXES:
        tif = open_tiff(path)
        if tif is not None:
            with tif:
                if not tif.pages:
                    raise UserError(f"{path} is a TIFF without pages: nothing to predict; replace or remove it")
                source = ImageSource(path, len(tif.pages), tiff=True, limit=limit)
                for index, page in enumerate(tif.pages):
                    limit.check(page_header(page), source.page_name(index))
                return source
    limit.check(read_header(path), str(path))
    return ImageSource(path, limit=limit)


def _check_channels(samples: int, channels: int, where: str) -> None:
    if samples in (1, 3):
        return
    takes = (
        "grayscale (1-channel) images, and converts RGB ones to grey"
        if channels == 1
        else "RGB (3-channel) images, and replicates grayscale ones"
    )
    raise UserError(
        f"{where} has {samples} channels per pixel, but this checkpoint takes {takes}: save it as grayscale or RGB"
    )


def read_pages(source: ImageSource, channels: int) -> Iterator[np.ndarray]:
    """Each page as a (channels, H, W) array of its own dtype, one at a time; UserError names a bad page."""
    if not source.tiff:
        yield read_image(source.path, channels, source.limit)
        return
    tif = open_tiff(source.path)
    if tif is None:
        raise UserError(f"cannot read {source.path}: its TIFF directory is no longer readable")
    with tif:
        for index, page in enumerate(tif.pages):
            where = source.page_name(index)
            _check_channels(colour_samples(page), channels, where)
            yield as_channels(decode(source.path, source.limit, tif, index, where), channels)
