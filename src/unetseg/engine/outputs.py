"""What predict writes for each image, all named from the input's stem in the output folder:

- ``mask``: ``<stem>.png``, 0/255 (binary) or class ids spread over 0..255 (several classes)
- ``probability``: ``<stem>_probability.png``, the foreground probability as a 16-bit PNG (0..65535), or one
  ``<stem>_probability_<class>.png`` per class for several classes
- ``overlay``: ``<stem>_overlay.png``, the input in grey with each non-background class tinted
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetseg.data.io import write_png_atomic

KINDS = ("mask", "probability", "overlay")
# BGR tints for classes 1, 2, ...: green, magenta, yellow, cyan, orange, blue
_TINTS = np.array(
    [[60, 200, 60], [200, 60, 200], [40, 220, 240], [230, 200, 40], [40, 140, 250], [220, 80, 40]], np.float32
)


def output_names(stem: str, kinds: list[str], class_names: list[str], num_outputs: int) -> list[str]:
    """Every file name an image produces, so that existing files can be found before anything is written."""
    names = []
    if "mask" in kinds:
        names.append(f"{stem}.png")
    if "probability" in kinds:
        names += (
            [f"{stem}_probability.png"]
            if num_outputs == 1
            else [f"{stem}_probability_{name}.png" for name in class_names]
        )
    if "overlay" in kinds:
        names.append(f"{stem}_overlay.png")
    return names


def _overlay(normalised: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(C, H, W) image in [0, 1] and (H, W) class ids → BGR uint8 with classes > 0 tinted at 40%."""
    grey = normalised.mean(axis=0) if normalised.shape[0] > 1 else normalised[0]
    picture = np.repeat((grey * 255)[..., None], 3, axis=2).astype(np.float32)
    for class_id in range(1, int(classes.max()) + 1):
        where = classes == class_id
        picture[where] = 0.6 * picture[where] + 0.4 * _TINTS[(class_id - 1) % len(_TINTS)]
    return np.clip(picture, 0, 255).astype(np.uint8)


def write_outputs(
    folder: Path,
    stem: str,
    kinds: list[str],
    normalised: np.ndarray,
    probabilities: np.ndarray,
    classes: np.ndarray,
    mask_values: np.ndarray,
    class_names: list[str],
) -> None:
    """Write the chosen outputs for one image, each atomically."""
    if "mask" in kinds:
        write_png_atomic(folder / f"{stem}.png", mask_values)
    if "probability" in kinds:
        names = (
            [f"{stem}_probability.png"]
            if probabilities.shape[0] == 1
            else [f"{stem}_probability_{name}.png" for name in class_names]
        )
        for name, channel in zip(names, probabilities, strict=True):
            write_png_atomic(folder / name, np.round(np.clip(channel, 0, 1) * 65535).astype(np.uint16))
    if "overlay" in kinds:
        write_png_atomic(folder / f"{stem}_overlay.png", _overlay(normalised, classes))
