"""Random flips and 90° rotations, applied identically to image (C, H, W) and label (H, W).

numpy on the last two axes: cv2.flip on a (1, H, W) array flips the wrong axis (and OpenCV 5 rejects it).
"""

from __future__ import annotations

import numpy as np


def flip_rotate(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, flip: bool, rotate90: bool
) -> tuple[np.ndarray, np.ndarray]:
    if flip:
        for axis in (-1, -2):
            if rng.random() < 0.5:
                image, label = np.flip(image, axis=axis), np.flip(label, axis=axis)
    if rotate90:
        square = image.shape[-1] == image.shape[-2]
        turns = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        if turns:
            image, label = np.rot90(image, turns, axes=(-2, -1)), np.rot90(label, turns, axes=(-2, -1))
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
