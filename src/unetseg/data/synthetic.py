"""Deterministic EM-like images with exact masks, so the tool works with no files at all.

Each image is a warped Voronoi tiling: irregular cells (label 1, like ISBI's 255) separated by dark
membranes of varying thickness (label 0). The image adds what makes real EM hard: dark organelles inside
cells that are not membrane, texture, blur, uneven illumination and noise. Image ``index`` of generator
``seed`` is always the same, on any machine.
"""

from __future__ import annotations

import cv2
import numpy as np


def _smooth_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise scaled to unit standard deviation."""
    noise = rng.standard_normal((size, size)).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), sigma)
    return field / (field.std() + 1e-8)


def synthetic_pair(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (H, W), label uint8 (H, W) in {0, 1}) pair."""
    rng = np.random.default_rng([seed, index])
    mean_cell_diameter = rng.uniform(22.0, 36.0)
    n_cells = max(4, int((size / mean_cell_diameter) ** 2))

    seeds = np.full((size, size), 255, np.uint8)
    points = rng.integers(0, size, size=(n_cells, 2))
    seeds[points[:, 0], points[:, 1]] = 0
    _, regions = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)

    # Warp the tiling with a smooth displacement field so cell walls curve like real membranes.
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32)
    amplitude = rng.uniform(2.0, 5.0)
    map_x = grid_x + amplitude * _smooth_field(rng, size, size / 12)
    map_y = grid_y + amplitude * _smooth_field(rng, size, size / 12)
    regions = cv2.remap(regions.astype(np.float32), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)

    boundary = np.zeros((size, size), np.uint8)
    boundary[:, 1:] |= (regions[:, 1:] != regions[:, :-1]).astype(np.uint8)
    boundary[1:, :] |= (regions[1:, :] != regions[:-1, :]).astype(np.uint8)
    thickness = int(rng.integers(2, 4))
    membrane = cv2.dilate(boundary, np.ones((thickness, thickness), np.uint8)) > 0
    label = (~membrane).astype(np.uint8)

    # Cell interiors: a grey level per cell plus fine texture.
    cell_ids = regions.astype(np.int64)
    cell_grey = rng.uniform(0.55, 0.8, size=int(cell_ids.max()) + 1).astype(np.float32)
    image = cell_grey[cell_ids] + 0.06 * _smooth_field(rng, size, 1.5)
    # Dark organelles (mitochondria, vesicles) inside cells: dark but not membrane.
    organelles = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 1 + n_cells // 2))):
        center = (int(rng.integers(size)), int(rng.integers(size)))
        axes = (int(rng.integers(2, 6)), int(rng.integers(2, 4)))
        cv2.ellipse(organelles, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    organelle_mask = (organelles > 0) & ~cv2.dilate(membrane.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    image[organelle_mask] = rng.uniform(0.3, 0.42)
    image[membrane] = rng.uniform(0.12, 0.25) + 0.05 * _smooth_field(rng, size, 1.0)[membrane]

    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.8, 1.4))
    illumination = 1.0 + rng.uniform(0.1, 0.25) * _smooth_field(rng, size, size / 4)
    image = image * illumination + rng.uniform(0.03, 0.06) * rng.standard_normal((size, size)).astype(np.float32)
    return np.clip(image * 255.0, 0, 255).astype(np.uint8), label
