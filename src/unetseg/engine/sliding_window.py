"""Sliding-window inference (nnU-Net's recipe, with the U-Net paper's mirrored borders) and test-time
augmentation, as small functions the Predictor composes.

An image is mirror-padded, cut into overlapping tiles (``overlap`` 0.5 = a step of half a tile), the tiles
are run through the network in batches, and their class probabilities are blended with Gaussian weights
(σ = tile/8) that trust each tile's centre more than its edges. Accumulators are float32 arrays the size
of the output; tiles are produced and consumed batch by batch, never held all at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

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


def tile_positions(height: int, width: int, tile: int, overlap: float) -> Iterator[tuple[int, int]]:
    for top in tile_starts(height, tile, overlap):
        for left in tile_starts(width, tile, overlap):
            yield top, left


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


def sliding_window(
    image: torch.Tensor,
    forward: Forward,
    tile: int,
    overlap: float,
    gaussian: bool,
    batch_size: int,
    num_outputs: int,
) -> np.ndarray:
    """(C, H, W) normalised image → (K, H, W) float32 blended probabilities."""
    _, height, width = image.shape
    # Mirror the borders (overlap-tile): border pixels get context, and small images fill a whole tile.
    pad_h = max(tile // 8, -(-(tile - height) // 2))
    pad_w = max(tile // 8, -(-(tile - width) // 2))
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    padded = F.pad(image[None], [pad_w, pad_w, pad_h, pad_h], mode=mode)[0]
    _, padded_h, padded_w = padded.shape
    weights = importance_map(tile, gaussian)
    probabilities = np.zeros((num_outputs, padded_h, padded_w), np.float32)
    weight_sum = np.zeros((padded_h, padded_w), np.float32)

    def flush(batch: list[tuple[int, int]]) -> None:
        crops = torch.stack([padded[:, top : top + tile, left : left + tile] for top, left in batch])
        out = forward(crops).float().cpu().numpy()
        for (top, left), tile_probs in zip(batch, out, strict=True):
            probabilities[:, top : top + tile, left : left + tile] += tile_probs * weights
            weight_sum[top : top + tile, left : left + tile] += weights

    pending: list[tuple[int, int]] = []
    for position in tile_positions(padded_h, padded_w, tile, overlap):
        pending.append(position)
        if len(pending) == batch_size:
            flush(pending)
            pending = []
    if pending:
        flush(pending)
    probabilities /= weight_sum
    return probabilities[:, pad_h : pad_h + height, pad_w : pad_w + width]
