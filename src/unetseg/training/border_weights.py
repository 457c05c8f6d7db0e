"""The U-Net paper's loss weight map: w(x) = w_c(x) + w0 · exp(−(d1(x) + d2(x))² / (2σ²)).

w_c balances the class frequencies of the label (mean weight of each class's pixels ∝ 1/frequency);
d1 and d2 are the distances to the nearest and second-nearest cell (4-connected region of a foreground
class). The border term is added on background (membrane) pixels, where it makes the thin borders
between touching cells count: inside a cell d1 = 0 and the term would only blur the class balance.
Computed once per label when the training set is loaded.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from unetseg.config import TrainConfig, TrainingTarget
from unetseg.data.targets import INTERIOR


def class_balance(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-pixel weight n / (K · n_class): every present class carries the same total weight."""
    counts = np.bincount(label.ravel(), minlength=num_classes).astype(np.float64)
    present = counts > 0
    per_class = np.zeros(num_classes)
    per_class[present] = label.size / (present.sum() * counts[present])
    return per_class[label].astype(np.float32)


def exact_distances(distance: np.ndarray) -> np.ndarray:
    """OpenCV's precise Euclidean transform, made bit-reproducible. Its squared distances are whole
    numbers, but OpenCV 5 returns their square roots with a last-bit error that varies from call to call
    (about 4e-6 on a 48×48 label), which made two runs of the same training differ. Rounding the squares
    to integers and taking numpy's correctly rounded square root gives the same float32 every time."""
    return np.sqrt(np.rint(np.square(distance, dtype=np.float64))).astype(np.float32)


def two_nearest_distances(foreground: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the distances to the nearest and second-nearest 4-connected region of ``foreground``
    (inf beyond ``reach`` px). Each region's distance transform is computed only in its bounding box
    grown by ``reach``: farther pixels cannot get a border weight that matters."""
    height, width = foreground.shape
    nearest = np.full(foreground.shape, np.inf, np.float32)
    second = np.full(foreground.shape, np.inf, np.float32)
    margin = int(math.ceil(reach))
    count, regions, stats, _ = cv2.connectedComponentsWithStats(foreground.astype(np.uint8), connectivity=4)
    for region in range(1, count):
        x, y, w, h = stats[region, :4]
        top, left = max(0, y - margin), max(0, x - margin)
        bottom, right = min(height, y + h + margin), min(width, x + w + margin)
        window = regions[top:bottom, left:right]
        outside = (window != region).astype(np.uint8)
        distance = exact_distances(cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE))
        near, sec = nearest[top:bottom, left:right], second[top:bottom, left:right]
        closer = distance < near
        sec[:] = np.where(closer, near, np.minimum(sec, distance))
        near[:] = np.minimum(near, distance)
    return nearest, second


def border_weight_map(
    label: np.ndarray,
    num_classes: int,
    w0: float,
    sigma: float,
    balance_classes: bool = True,
    objects: np.ndarray | None = None,
) -> np.ndarray:
    """float32 (H, W) weights for one uint8 class-id label; without ``balance_classes`` w_c = 1 (for a
    loss whose Dice term already balances the classes). ``objects`` (default: every class but 0) are the
    pixels whose 4-connected regions are the cells; the border term goes on every other pixel. With the
    boundary target they are the interiors, so the boundary band between two nuclei gets the weight."""
    weights = class_balance(label, max(2, num_classes)) if balance_classes else np.ones(label.shape, np.float32)
    reach = sigma * math.sqrt(2 * 20)  # exp(-20) ≈ 2e-9: beyond this, the term vanishes
    cells = label > 0 if objects is None else objects
    d1, d2 = two_nearest_distances(cells, reach)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    background = ~cells
    weights[background] += border[background].astype(np.float32)
    return weights


@dataclass(frozen=True)
class LossWeights:
    """The weight map a training config asks for: ``compute(class ids)``, and ``key``, which names every setting
    it depends on (its file name in the disk cache)."""

    compute: Callable[[np.ndarray], np.ndarray]
    key: str


def _weights_of(
    label: np.ndarray, num_classes: int, w0: float, sigma: float, balance: bool, boundary: bool
) -> np.ndarray:
    objects = label == INTERIOR if boundary else None
    return border_weight_map(label, num_classes, w0, sigma, balance, objects=objects)


def loss_weights(cfg: TrainConfig) -> LossWeights:
    """The border weight map of trainer.border_weight, border_sigma and class_balance (for data.target=boundary,
    the objects are the interiors)."""
    t, classes = cfg.trainer, cfg.model.num_classes
    boundary = cfg.data.target == TrainingTarget.boundary
    compute = functools.partial(
        _weights_of,
        num_classes=classes,
        w0=t.border_weight,
        sigma=t.border_sigma,
        balance=t.class_balance,
        boundary=boundary,
    )
    return LossWeights(compute, f"border-{classes}-{t.border_weight!r}-{t.border_sigma!r}-{t.class_balance}-{boundary}")
