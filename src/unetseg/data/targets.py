"""What the network learns from an instance map: the objects as a mask (``data.target=mask``), or as three
classes, background / interior / boundary (``data.target=boundary``), so that touching objects stay apart.

The boundary target is the contour-aware approach of the 2018 Data Science Bowl winners: a band of
``width`` pixels just inside each object, wherever it meets another object or the background, is a class
of its own. At predict time the connected interiors are the seeds that a watershed grows back into whole
objects (unetseg.objects.instances).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

from unetseg.runtime.errors import UserError

BOUNDARY_CLASSES = ("background", "interior", "boundary")
INTERIOR, BOUNDARY = 1, 2  # class ids of the boundary target


def boundary_target(instances: np.ndarray, width: int) -> np.ndarray:
    """(H, W) instance ids (0 = background) → uint8 classes: 0 background, 1 interior, 2 boundary (the
    pixels of an object within ``width`` px of a pixel that is not of the same object)."""
    inner = find_boundaries(instances, connectivity=1, mode="inner", background=0)
    if width > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width - 1, 2 * width - 1))
        inner = cv2.dilate(inner.astype(np.uint8), kernel) > 0
    classes = (instances > 0).astype(np.uint8)
    classes[inner & (instances > 0)] = BOUNDARY
    return classes


def instance_map(label: np.ndarray, encoding: str) -> np.ndarray | None:
    """The label as int32 object ids if it is an instance map under ``encoding`` (``instance``; or, in
    ``auto``, a 16/32-bit file, or an 8-bit one with more than two values); None for a binary mask."""
    if encoding == "binary":
        return None
    if encoding == "auto" and label.dtype.itemsize == 1 and np.unique(label).size <= 2:
        return None
    return label.astype(np.int32, copy=False)


def require_instances(instances: np.ndarray | None, path: Path) -> np.ndarray:
    """The instance map that ``data.target=boundary`` needs, or a one-line error for a binary mask."""
    if instances is None:
        raise UserError(
            f"data.target=boundary needs instance label maps (one id per object, e.g. a 16-bit PNG or TIFF), but "
            f"{path} is a binary mask: give instance maps, set data.label_encoding=instance if the 8-bit ids are "
            "already one per object, or train data.target=mask"
        )
    return instances
