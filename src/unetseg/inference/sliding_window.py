"""Sliding-window inference (nnU-Net's recipe, with the U-Net paper's mirrored borders) and test-time
augmentation, as small functions the Predictor composes.

An image is mirrored at its borders, cut into overlapping tiles (``overlap`` 0.5 = a step of half a tile),
the tiles are run through the network in batches, and their class probabilities are blended with Gaussian
weights (σ = tile/8) that trust each tile's centre more than its edges.

Memory does not grow with the tiles: tiles are cut from the raw (unpadded, un-normalised) image one batch
at a time (mirrored indices instead of a padded copy; ``prepare`` normalises each batch), and the blend is
accumulated in float32 buffers one tile high. Tiles are visited row by row; once a row of tiles is done,
the rows above the next row of tiles are final and are handed out as a band, so a caller can turn them into
classes (uint8) straight away instead of keeping a (K, H, W) float32 map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache

import numpy as np
import torch

Forward = Callable[[torch.Tensor], torch.Tensor]  # (N, C, h, w) → (N, K, h, w) probabilities


@lru_cache(maxsize=8)
def importance_map(tile: int, gaussian: bool) -> np.ndarray:
    """(tile, tile) blending weights: a Gaussian with σ = tile/8 (max 1), or all ones."""
    if not gaussian:
        return np.ones((tile, tile), np.float32)
    centre = (tile - 1) / 2
    axis = np.exp(-0.5 * ((np.arange(tile) - centre) / (tile / 8)) ** 2)
    weights = np.outer(axis, axis).astype(np.float32)
    weights /= weights.max()
    return np.maximum(weights, 1e-3)  # the far corners still count a little, so every pixel is covered


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets covering [0, length) with tiles of ``tile`` and a step of ``tile × (1 − overlap)``."""
    if length <= tile:
        return [0]
    step = max(1, int(round(tile * (1 - overlap))))
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def dihedral_transforms(tta: str) -> list[tuple[int, bool]]:
    """(quarter turns, horizontal flip) pairs: none → identity; flip → the 4 flips; d4 → all 8."""
    if tta == "none":
        return [(0, False)]
    if tta == "flip":
        return [(0, False), (0, True), (2, False), (2, True)]  # identity, h-flip, 180° (= h+v), v-flip
    return [(turns, flip) for turns in range(4) for flip in (False, True)]


def with_tta(forward: Forward, tta: str) -> Forward:
    """Average the probabilities over the transformed inputs, each mapped back before averaging."""
    transforms = dihedral_transforms(tta)
    if len(transforms) == 1:
        return forward

    def averaged(batch: torch.Tensor) -> torch.Tensor:
        total = None
        for turns, flip in transforms:
            x = torch.rot90(batch, turns, dims=(-2, -1))
            x = torch.flip(x, dims=(-1,)) if flip else x
            y = forward(x)
            y = torch.flip(y, dims=(-1,)) if flip else y
            y = torch.rot90(y, -turns, dims=(-2, -1))
            total = y if total is None else total + y
        return total / len(transforms)

    return averaged


Prepare = Callable[[np.ndarray], np.ndarray]  # raw crops (N, C, h, w) → normalised float32, same shape


def border(length: int, tile: int) -> int:
    """Mirrored border on each side: tile/8 of context, or enough to fill a whole tile for small images."""
    return max(tile // 8, -(-(tile - length) // 2))


def mirror_indices(start: int, count: int, length: int) -> np.ndarray:
    """Indices ``start .. start + count`` into an axis of ``length``, reflected at both ends (without
    repeating the edge, as numpy's and torch's "reflect"), bouncing as often as needed for short axes."""
    index = np.arange(start, start + count)
    if length == 1:
        return np.zeros(count, np.intp)
    period = 2 * (length - 1)
    index %= period
    return np.where(index >= length, period - index, index)


def mirrored_crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """(C, size, size) crop of a (C, H, W) image at (top, left), which may lie partly outside it."""
    _, height, width = image.shape
    if top >= 0 and left >= 0 and top + size <= height and left + size <= width:
        return image[:, top : top + size, left : left + size]
    rows = mirror_indices(top, size, height)
    cols = mirror_indices(left, size, width)
    return image[:, rows[:, None], cols[None, :]]


def count_tiles(height: int, width: int, tile: int, overlap: float) -> int:
    padded_h, padded_w = height + 2 * border(height, tile), width + 2 * border(width, tile)
    return len(tile_starts(padded_h, tile, overlap)) * len(tile_starts(padded_w, tile, overlap))


def blended_rows(
    image: np.ndarray,
    prepare: Prepare,
    forward: Forward,
    tile: int,
    overlap: float,
    gaussian: bool,
    batch_size: int,
    num_outputs: int,
    on_tiles: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """(C, H, W) image of any dtype → yields (first row, (K, rows, W) float32 blended probabilities), top to
    bottom, covering every row once. ``on_tiles(n)`` is called after every batch of n tiles."""
    _, height, width = image.shape
    pad_h, pad_w = border(height, tile), border(width, tile)
    padded_w = width + 2 * pad_w
    tops = tile_starts(height + 2 * pad_h, tile, overlap)
    lefts = tile_starts(padded_w, tile, overlap)
    weights = importance_map(tile, gaussian)
    # Padded rows [tops[i], tops[i] + tile) of the blend; slid down after each row of tiles.
    total = np.zeros((num_outputs, tile, padded_w), np.float32)
    weight_sum = np.zeros((tile, padded_w), np.float32)
    for row, top in enumerate(tops):
        for first in range(0, len(lefts), batch_size):
            batch = lefts[first : first + batch_size]
            crops = np.stack([mirrored_crop(image, top - pad_h, left - pad_w, tile) for left in batch])
            out = forward(torch.from_numpy(prepare(crops))).float().cpu().numpy()
            for left, tile_probs in zip(batch, out, strict=True):
                tile_probs *= weights
                total[:, :, left : left + tile] += tile_probs
                weight_sum[:, left : left + tile] += weights
            if on_tiles is not None:
                on_tiles(len(batch))
        done = (tops[row + 1] if row + 1 < len(tops) else top + tile) - top  # these rows get no more tiles
        first_row, last_row = max(top, pad_h), min(top + done, pad_h + height)  # padded coordinates
        if first_row < last_row:
            rows, cols = slice(first_row - top, last_row - top), slice(pad_w, pad_w + width)
            yield first_row - pad_h, total[:, rows, cols] / weight_sum[rows, cols]
        total[:, : tile - done] = total[:, done:]
        total[:, tile - done :] = 0
        weight_sum[: tile - done] = weight_sum[done:]
        weight_sum[tile - done :] = 0


def assemble(rows: Iterator[tuple[int, np.ndarray]], num_outputs: int, height: int, width: int) -> np.ndarray:
    """Bands from :func:`blended_rows` → one (K, H, W) float32 array."""
    probabilities = np.empty((num_outputs, height, width), np.float32)
    for top, band in rows:
        probabilities[:, top : top + band.shape[1]] = band
    return probabilities
