"""Deterministic images with exact masks and instance maps, so the tool works with no files at all.

Two kinds (``data.synthetic.kind``), each image ``index`` of generator ``seed`` always the same, on any machine:

- ``voronoi`` (EM-like, 8-bit): a warped Voronoi tiling: irregular cells (label 1, like ISBI's 255) separated
  by dark membranes of varying thickness (label 0), with what makes real EM hard: dark organelles inside cells
  that are not membrane, texture, blur, uneven illumination and noise. Its instances are the cells.
- ``nuclei`` (fluorescence-like, 16-bit): bright elliptical nuclei on a dark background, many of them touching
  or overlapping (the later one in front), each dome-shaped with its own brightness and texture, under blur,
  uneven illumination and shot noise. Its instances are the visible parts of the nuclei.
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
    """One EM-like (image uint8 (H, W), label uint8 (H, W) in {0, 1}) pair."""
    image, instances = voronoi_sample(seed, index, size)
    return image, (instances > 0).astype(np.uint8)


def synthetic_sample(kind: str, seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image (H, W), instance map int32 (H, W): 0 background, 1..n objects) of either kind."""
    return (nuclei_sample if kind == "nuclei" else voronoi_sample)(seed, index, size)


def voronoi_sample(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One EM-like image (uint8 (H, W)) and its cells as an int32 instance map (membranes 0)."""
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
    cells = np.where(membrane, 0, regions.astype(np.int32) + 1)
    # A cell cut in two by the warp is two objects: number the 4-connected pieces.
    _, instances = cv2.connectedComponents((cells > 0).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)

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
    return np.clip(image * 255.0, 0, 255).astype(np.uint8), instances


def _ellipse(
    size: int, center: np.ndarray, axes: tuple[float, float], angle: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The ellipse's bounding box in the image, and per pixel of it (inside, squared normalised radius: 0 at
    the centre, 1 on the edge). Only the box is computed, so large images stay fast."""
    reach = max(axes) + 1
    top, left = max(0, int(np.floor(center[0] - reach))), max(0, int(np.floor(center[1] - reach)))
    bottom, right = min(size, int(np.ceil(center[0] + reach)) + 1), min(size, int(np.ceil(center[1] + reach)) + 1)
    box = (slice(top, max(top, bottom)), slice(left, max(left, right)))
    y, x = np.mgrid[box].astype(np.float32)
    cos, sin = np.cos(angle), np.sin(angle)
    u = ((x - center[1]) * cos + (y - center[0]) * sin) / axes[0]
    v = (-(x - center[1]) * sin + (y - center[0]) * cos) / axes[1]
    radius2 = u * u + v * v
    return box, radius2 <= 1.0, radius2


def nuclei_sample(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One fluorescence-like image (uint16 (H, W)) and its nuclei as an int32 instance map.

    About half the nuclei are placed against an earlier one (touching or overlapping it by up to a quarter
    of their size), so that touching objects are the rule, not the exception; one that would be left with
    less than half of its area visible is dropped.
    """
    rng = np.random.default_rng([seed, index, 1])
    radius = rng.uniform(6.0, 10.0)  # the typical semi-axis in this image
    count = max(3, int(0.45 * size * size / (np.pi * radius * radius * 1.6)))
    instances = np.zeros((size, size), np.int32)
    brightness = np.zeros((size, size), np.float32)
    placed: list[tuple[np.ndarray, float]] = []
    full_areas: list[int] = []  # of each drawn ellipse (within the image)
    boxes: list[tuple[slice, slice]] = []
    for _ in range(count):
        axes = (radius * rng.uniform(0.8, 1.35), radius * rng.uniform(0.6, 0.95))
        angle = rng.uniform(0, np.pi)
        if placed and rng.random() < 0.5:
            anchor, anchor_radius = placed[int(rng.integers(len(placed)))]
            direction = rng.uniform(0, 2 * np.pi)
            distance = (anchor_radius + 0.8 * axes[1]) * rng.uniform(0.8, 1.05)
            center = anchor + distance * np.array([np.sin(direction), np.cos(direction)])
        else:
            center = rng.uniform(0, size, size=2)
        box, inside, radius2 = _ellipse(size, center, axes, angle)
        if inside.sum() < 12:
            continue
        covered = instances[box][inside] > 0
        if covered.mean() > 0.5:
            continue
        object_id = len(full_areas) + 1
        full_areas.append(int(inside.sum()))
        boxes.append(box)
        instances[box][inside] = object_id
        # A dome: bright in the middle, falling off towards the edge (so a seam shows where two touch).
        level = rng.uniform(0.35, 1.0)
        brightness[box][inside] = level * (0.45 + 0.55 * np.sqrt(1.0 - radius2[inside]))
        placed.append((center, float(np.mean(axes))))
    # A nucleus mostly hidden behind later ones is dropped (its visible rest goes dark): the truth holds only
    # objects an expert could outline. One cut in two keeps its larger piece.
    relabelled = np.zeros_like(instances)
    next_id = 1
    for object_id, (full_area, box) in enumerate(zip(full_areas, boxes, strict=True), start=1):
        count_pieces, pieces, stats, _ = cv2.connectedComponentsWithStats(
            (instances[box] == object_id).astype(np.uint8), connectivity=4
        )
        if count_pieces < 2:
            continue
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if stats[largest, cv2.CC_STAT_AREA] >= max(12, 0.5 * full_area):
            relabelled[box][pieces == largest] = next_id
            next_id += 1
    brightness[(instances > 0) & (relabelled == 0)] = 0.0
    instances = relabelled

    texture = 1.0 + 0.12 * _smooth_field(rng, size, 1.2)
    image = brightness * texture
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.8, 1.6))
    # Centred: a field this smooth has few independent values, and its mean alone could darken the image.
    shading = _smooth_field(rng, size, size / 3)
    illumination = np.clip(1.0 + rng.uniform(0.1, 0.3) * (shading - shading.mean()), 0.5, None)
    background = rng.uniform(0.04, 0.1)
    photons = rng.uniform(150.0, 400.0)  # photons at brightness 1: shot noise
    expected = np.clip((image + background) * illumination, 0, None) * photons
    counts = rng.poisson(expected).astype(np.float32) + rng.normal(0, 2.0, (size, size)).astype(np.float32)
    scale = 4000.0 / photons
    return np.clip(100.0 + counts * scale, 0, 65535).astype(np.uint16), instances
