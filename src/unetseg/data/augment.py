"""Training augmentation: random crops, flips, 90° turns, elastic deformation and intensity changes.

Geometric transforms move the image (C, H, W), its label (H, W) and, when training with the border
weight map, the weights (H, W) together; intensity transforms touch the image only. Flips and turns
use numpy on the last two axes: cv2.flip on a (1, H, W) array flips the wrong axis (OpenCV 5 rejects it).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from unetseg.config import AugmentConfig
from unetseg.data.normalize import Scaling


@dataclass
class Sample:
    image: np.ndarray  # float32 (C, H, W), normalised to [0, 1]
    label: np.ndarray  # uint8 (H, W) class ids
    weight: np.ndarray | None = None  # float32 (H, W) per-pixel loss weights

    def geometric(self, transform) -> Sample:  # noqa: ANN001 - a function of one (..., H, W) array
        weight = None if self.weight is None else transform(self.weight)
        return Sample(transform(self.image), transform(self.label), weight)


def random_crop(sample: Sample, size: int, rng: np.random.Generator) -> Sample:
    """A random size×size window; images smaller than that are mirror-padded first."""
    height, width = sample.label.shape
    pad_y, pad_x = max(0, size - height), max(0, size - width)
    if pad_y or pad_x:

        def pad(array: np.ndarray) -> np.ndarray:
            widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_y), (0, pad_x)]
            return np.pad(array, widths, mode="reflect" if min(height, width) > 1 else "edge")

        sample = sample.geometric(pad)
        height, width = sample.label.shape
    top = int(rng.integers(height - size + 1))
    left = int(rng.integers(width - size + 1))
    return sample.geometric(lambda array: array[..., top : top + size, left : left + size])


def flip_rotate(sample: Sample, rng: np.random.Generator, flip: float, rotate90: float) -> Sample:
    for axis in (-1, -2):
        if rng.random() < flip:
            sample = sample.geometric(lambda array, axis=axis: np.flip(array, axis=axis))
    if rng.random() < rotate90:
        square = sample.label.shape[0] == sample.label.shape[1]
        turns = int(rng.integers(1, 4)) if square else 2
        sample = sample.geometric(lambda array: np.rot90(array, turns, axes=(-2, -1)))
    return sample


def elastic_maps(
    shape: tuple[int, int], grid: int, sigma: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The U-Net paper's deformation: a grid×grid field of N(0, sigma) pixel displacements, bicubically
    interpolated to every pixel; returned as cv2.remap's source coordinate maps."""
    height, width = shape
    dx = cv2.resize(
        rng.normal(0, sigma, (grid, grid)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
    )
    dy = cv2.resize(
        rng.normal(0, sigma, (grid, grid)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
    )
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs + dx, ys + dy


def elastic(sample: Sample, grid: int, sigma: float, rng: np.random.Generator) -> Sample:
    map_x, map_y = elastic_maps(sample.label.shape, grid, sigma, rng)

    def warp(array: np.ndarray, interpolation: int) -> np.ndarray:
        return cv2.remap(array, map_x, map_y, interpolation, borderMode=cv2.BORDER_REFLECT_101)

    image = np.stack([warp(channel, cv2.INTER_CUBIC) for channel in sample.image])
    label = warp(sample.label, cv2.INTER_NEAREST)
    weight = None if sample.weight is None else warp(sample.weight, cv2.INTER_LINEAR)
    return Sample(image, label, weight)


def intensity(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, gamma, noise and blur, each with its probability, on a [0, 1] image."""
    ranges = cfg.intensity
    image = image.astype(np.float32, copy=True)
    if rng.random() < cfg.brightness:
        image += rng.uniform(-ranges.brightness, ranges.brightness)
    if rng.random() < cfg.contrast:
        mean = image.mean()
        image = (image - mean) * rng.uniform(1 - ranges.contrast, 1 + ranges.contrast) + mean
    if rng.random() < cfg.gamma:
        image = np.clip(image, 0, 1) ** rng.uniform(1 - ranges.gamma, 1 + ranges.gamma)
    if rng.random() < cfg.blur:
        sigma = rng.uniform(0, ranges.blur_sigma)
        if sigma > 0.1:
            image = np.stack([cv2.GaussianBlur(channel, (0, 0), sigma) for channel in image])
    if rng.random() < cfg.noise:
        image += rng.normal(0, rng.uniform(0, ranges.noise_std), image.shape).astype(np.float32)
    return image.astype(np.float32, copy=False)


def augment(
    sample: Sample, cfg: AugmentConfig, patch_size: int | None, rng: np.random.Generator, scaling: Scaling | None = None
) -> Sample:
    """Crop first (every later step then works on the small patch), then geometry, then intensity.

    ``scaling``: the sample's arrays are the cached image as stored (memory-mapped, see unetseg.data.cache), to be
    normalised after the crop; normalisation is per pixel, so the patch equals the crop of the normalised image.
    """
    if patch_size is not None:
        sample = random_crop(sample, patch_size, rng)
    if scaling is not None:  # copies out of the memory map: only the patch's rows were read from disk
        weight = None if sample.weight is None else np.array(sample.weight)
        sample = Sample(scaling(sample.image), np.array(sample.label), weight)
    sample = flip_rotate(sample, rng, cfg.flip, cfg.rotate90)
    if rng.random() < cfg.elastic:
        sample = elastic(sample, cfg.elastic_grid, cfg.elastic_sigma, rng)
    image = intensity(sample.image, cfg, rng)
    weight = None if sample.weight is None else np.ascontiguousarray(sample.weight)
    return Sample(np.ascontiguousarray(image), np.ascontiguousarray(sample.label), weight)
