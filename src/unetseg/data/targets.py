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

from unetseg.runtime.errors import UserError

INTERIOR, BOUNDARY = 1, 2  # class ids of the boundary target


def boundary_target(instances: np.ndarray, width: int) -> np.ndarray:
    """(H, W) instance ids (0 = background) → uint8 classes: 0 background, 1 interior, 2 boundary (the
    pixels of an object within ``width`` px of a pixel that is not of the same object)."""
    from skimage.segmentation import find_boundaries  # imported when used: scikit-image takes ~0.5 s to import

    inner = find_boundaries(instances, connectivity=1, mode="inner", background=0)
    if width > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width - 1, 2 * width - 1))
        inner = cv2.dilate(inner.astype(np.uint8), kernel) > 0
    classes = (instances > 0).astype(np.uint8)
    classes[inner & (instances > 0)] = BOUNDARY
    return classes


def instance_map(label: np.ndarray, encoding: str) -> np.ndarray | None:
    """The label as int32 object ids if it is an instance map under ``encoding``; None for a binary mask.

    ``instance``: always. ``auto``: more than two values; or a 16/32-bit file with one object, unless that
    object's value is the dtype's maximum (0/65535 is how masks are saved in 16 bits: three blobs of 65535
    are three objects of a mask, not one object). 8-bit files with two values are masks.
    """
    if encoding == "binary":
        return None
    if encoding == "auto":
        values = np.unique(label)
        integers = np.issubdtype(label.dtype, np.integer) and label.dtype.itemsize > 1
        one_object_map = integers and values[-1] != np.iinfo(label.dtype).max
        if values.size <= 2 and not one_object_map:
            return None
    return label.astype(np.int32, copy=False)


def require_instances(instances: np.ndarray | None, path: Path) -> np.ndarray:
    """The instance map that ``data.target=boundary`` needs, or a one-line error for a binary mask."""
    if instances is None:
        raise UserError(
            f"the boundary target (data.target=boundary, or a checkpoint trained with it) needs instance label maps "
            f"(one id per object, e.g. a 16-bit PNG or TIFF), but {path} is a binary mask: point at the instance maps "
            "instead (unetseg synthesize writes them to instances/: labels=DIR/instances or data.label_dir=instances); "
            "only if this file's values already are object ids (a single object) set data.label_encoding=instance"
        )
    return instances
