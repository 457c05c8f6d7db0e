"""Sliding-window inference (nnU-Net's step rule, the U-Net paper's mirrored context) and test-time
augmentation, as small functions the Predictor composes.

An image is extended by ``margin`` mirrored pixels on each side (the U-Net paper's overlap-tile context).
Along an axis where the extended image fits in a tile it is run in one pass, mirror-padded only up to the
network's size multiple: a 512² slice with 512-px tiles is one forward pass, not four. Along a longer
axis it is cut into the fewest tiles that cover it with at least the asked ``overlap`` (nnU-Net's
``compute_steps_for_sliding_window``: steps spread evenly, none longer than tile × (1 − overlap)), and
the tiles' class probabilities are blended with Gaussian weights (σ = tile/8) that trust each tile's
centre more than its edges.

Memory does not grow with the tiles: tiles are cut from the raw (unpadded, un-normalised) image one batch
at a time (mirrored indices instead of a padded copy; ``prepare`` normalises each batch), and the blend is
accumulated in float32 buffers about one tile high. Tiles are visited row by row, in batches that may span
rows; once a batch is done, the rows above the next tile are final and are handed out as a band, so a caller
can turn them into classes (uint8) straight away instead of keeping a (K, H, W) float32 map.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

Forward = Callable[[torch.Tensor], torch.Tensor]  # (N, C, h, w) → (N, K, h, w) probabilities


@lru_cache(maxsize=8)
def importance_map(height: int, width: int, gaussian: bool) -> np.ndarray:
    """(height, width) blending weights: a Gaussian with σ = side/8 (max 1), or all ones."""
    if not gaussian:
        return np.ones((height, width), np.float32)

    def axis(length: int) -> np.ndarray:
        centre = (length - 1) / 2
        return np.exp(-0.5 * ((np.arange(length) - centre) / (length / 8)) ** 2)

    weights = np.outer(axis(height), axis(width)).astype(np.float32)
    weights /= weights.max()
    return np.maximum(weights, 1e-3)  # the far corners still count a little, so every pixel is covered


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """The fewest tile starts covering [0, length) whose steps are at most ``tile × (1 − overlap)``, spread
    evenly from 0 to ``length − tile`` (nnU-Net's rule: 640 px with 512-px tiles at 0.5 is 2 tiles, not 3)."""
    if length <= tile:
        return [0]
    longest_step = max(1.0, tile * (1 - overlap))
    steps = math.ceil((length - tile) / longest_step)
    step = (length - tile) / steps
    return [round(step * i) for i in range(steps + 1)]


def round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


@dataclass(frozen=True)
class Axis:
    """One axis of the tile grid, in the coordinates of the mirror-extended image (origin ``pad`` pixels
    before the image's first pixel)."""

    length: int  # of the image
    pad: int  # mirrored pixels before the image
    tile: int  # tile side along this axis
    starts: tuple[int, ...]


def plan_axis(length: int, tile: int | None, overlap: float, margin: int, multiple: int) -> Axis:
    """One pass if the image plus its margins fits in a tile (or ``tile`` is None), padded to the
    network's size multiple and centred; else tiles of ``tile`` over the image plus its margins."""
    extended = length + 2 * margin
    if tile is None or extended <= tile:
        size = round_up(extended, multiple)
        return Axis(length, margin + (size - extended) // 2, size, (0,))
    return Axis(length, margin, tile, tuple(tile_starts(extended, tile, overlap)))


@dataclass(frozen=True)
class TileGrid:
    rows: Axis
    cols: Axis

    @property
    def count(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    @property
    def single(self) -> bool:
        """One pass covers the whole image: no blending, and it can share a batch with other images."""
        return self.count == 1

    @property
    def input_shape(self) -> tuple[int, int]:
        """(h, w) of every tile the network sees."""
        return self.rows.tile, self.cols.tile


def plan_tiles(height: int, width: int, tile: int | None, overlap: float, margin: int, multiple: int) -> TileGrid:
    """Where the tiles of a ``height × width`` image go (see the module docstring)."""
    return TileGrid(
        plan_axis(height, tile, overlap, margin, multiple), plan_axis(width, tile, overlap, margin, multiple)
    )


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
            y = forward(x.contiguous())
            y = torch.flip(y, dims=(-1,)) if flip else y
            y = torch.rot90(y, -turns, dims=(-2, -1))
            total = y if total is None else total + y
        return total / len(transforms)

    return averaged


def mean_of(forwards: list[Forward]) -> Forward:
    """An ensemble's forward: its members' probabilities for the same batch, averaged. The members run one after
    the other, so memory holds one member's output beside the running sum, never one map per member."""
    if len(forwards) == 1:
        return forwards[0]

    def mean(batch: torch.Tensor) -> torch.Tensor:
        total = forwards[0](batch).float()
        for forward in forwards[1:]:
            total = total + forward(batch).float()
        return total / len(forwards)

    return mean


Prepare = Callable[[np.ndarray], np.ndarray]  # raw crops (N, C, h, w) → normalised float32, same shape


def mirror_indices(start: int, count: int, length: int) -> np.ndarray:
    """Indices ``start .. start + count`` into an axis of ``length``, reflected at both ends (without
    repeating the edge, as numpy's and torch's "reflect"), bouncing as often as needed for short axes."""
    index = np.arange(start, start + count)
    if length == 1:
        return np.zeros(count, np.intp)
    period = 2 * (length - 1)
    index %= period
    return np.where(index >= length, period - index, index)


def mirrored_crop(image: np.ndarray, top: int, left: int, height: int, width: int | None = None) -> np.ndarray:
    """(C, height, width) crop of a (C, H, W) image at (top, left), which may lie partly outside it
    (``width`` defaults to ``height``)."""
    width = height if width is None else width
    _, image_h, image_w = image.shape
    if top >= 0 and left >= 0 and top + height <= image_h and left + width <= image_w:
        return image[:, top : top + height, left : left + width]
    rows = mirror_indices(top, height, image_h)
    cols = mirror_indices(left, width, image_w)
    return image[:, rows[:, None], cols[None, :]]


def single_pass_input(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """The one (C, h, w) input of an image that one pass covers: the image with its mirrored padding."""
    return mirrored_crop(image, -grid.rows.pad, -grid.cols.pad, grid.rows.tile, grid.cols.tile)


def single_pass_output(output: np.ndarray, grid: TileGrid) -> np.ndarray:
    """The image's own pixels of the (K, h, w) output of :func:`single_pass_input`."""
    r, c = grid.rows, grid.cols
    return output[:, r.pad : r.pad + r.length, c.pad : c.pad + c.length]


def blended_rows(
    image: np.ndarray,
    prepare: Prepare,
    forward: Forward,
    grid: TileGrid,
    gaussian: bool,
    batch_size: int,
    num_outputs: int,
    on_tiles: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """(C, H, W) image of any dtype → yields (first row, (K, rows, W) float32 blended probabilities), top to
    bottom, covering every row once. ``on_tiles(n)`` is called after every batch of n tiles."""
    rows, cols = grid.rows, grid.cols
    if grid.single:
        output = forward(torch.from_numpy(prepare(single_pass_input(image, grid)[None])))
        if on_tiles is not None:
            on_tiles(1)
        yield 0, single_pass_output(output[0].float().cpu().numpy(), grid)
        return
    tile_h, tile_w = grid.input_shape
    extended_w, extended_h = cols.starts[-1] + tile_w, rows.starts[-1] + tile_h
    weights = importance_map(tile_h, tile_w, gaussian)
    # Batches run across rows of tiles, so every batch but an image's last has the same shape: a short batch at
    # the end of each row (15 tiles = 4+4+4+3) made oneDNN and the allocator keep memory for two shapes
    # (+105 MiB at 2048², classic net, measured with benchmarks/predict_memory.py).
    positions = [(top, left) for top in rows.starts for left in cols.starts]
    buffer_top = 0  # the extended row at index 0 of the buffers; the rows above it are final and handed out
    total = np.zeros((num_outputs, tile_h, extended_w), np.float32)
    weight_sum = np.zeros((tile_h, extended_w), np.float32)
    for first in range(0, len(positions), batch_size):
        batch = positions[first : first + batch_size]
        crops = np.stack([mirrored_crop(image, t - rows.pad, left - cols.pad, tile_h, tile_w) for t, left in batch])
        out = forward(torch.from_numpy(prepare(crops))).float().cpu().numpy()
        missing = batch[-1][0] + tile_h - buffer_top - total.shape[1]
        if missing > 0:  # a batch reaching into the next row of tiles: the buffers grow (once)
            total = np.concatenate([total, np.zeros((num_outputs, missing, extended_w), np.float32)], axis=1)
            weight_sum = np.concatenate([weight_sum, np.zeros((missing, extended_w), np.float32)])
        for (top, left), tile_probs in zip(batch, out, strict=True):
            tile_probs *= weights
            r = top - buffer_top
            total[:, r : r + tile_h, left : left + tile_w] += tile_probs
            weight_sum[r : r + tile_h, left : left + tile_w] += weights
        if on_tiles is not None:
            on_tiles(len(batch))
        following = first + batch_size
        final = positions[following][0] if following < len(positions) else extended_h  # no later tile reaches above
        done = final - buffer_top
        if done <= 0:
            continue
        low, high = max(buffer_top, rows.pad), min(final, rows.pad + rows.length)  # extended coordinates
        if low < high:
            band_rows, band_cols = slice(low - buffer_top, high - buffer_top), slice(cols.pad, cols.pad + cols.length)
            yield low - rows.pad, total[:, band_rows, band_cols] / weight_sum[band_rows, band_cols]
        kept = total.shape[1] - done
        total[:, :kept] = total[:, done:]
        total[:, kept:] = 0
        weight_sum[:kept] = weight_sum[done:]
        weight_sum[kept:] = 0
        buffer_top = final


def assemble(rows: Iterator[tuple[int, np.ndarray]], num_outputs: int, height: int, width: int) -> np.ndarray:
    """Bands from :func:`blended_rows` → one (K, H, W) float32 array."""
    probabilities = np.empty((num_outputs, height, width), np.float32)
    for top, band in rows:
        probabilities[:, top : top + band.shape[1]] = band
    return probabilities
