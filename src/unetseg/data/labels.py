"""Turning label images in any common encoding into class ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetseg.data.targets import boundary_target, instance_map, require_instances
from unetseg.runtime.errors import UserError


@dataclass(frozen=True)
class LabelRule:
    """How label files become training targets: the class encoding, and ``target`` mask (the classes as
    stored) or boundary (background / interior / boundary from an instance map, band ``boundary_width``)."""

    num_classes: int
    encoding: str = "auto"
    target: str = "mask"
    boundary_width: int = 2

    def apply(self, label: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        """(H, W) label file → (uint8 class ids, int32 instance map or None when the file is a mask)."""
        instances = instance_map(label, self.encoding)
        if self.target == "boundary":
            instances = require_instances(instances, path)
            return self.classes_of_objects(instances), instances
        return encode_label(label, self.num_classes, self.encoding, path), instances

    def classes_of_objects(self, instances: np.ndarray) -> np.ndarray:
        """The training target of an instance map: background/interior/boundary, or object vs background."""
        if self.target == "boundary":
            return boundary_target(instances, self.boundary_width)
        return (instances > 0).astype(np.uint8)


def encode_label(label: np.ndarray, num_classes: int, encoding: str, path: Path) -> np.ndarray:
    """(H, W) label image → uint8 class ids.

    Binary task (``num_classes`` 1 or 2): 0/255, 0/1, or any two values become {0, 1} with > 0 (or the
    larger value) as foreground; an instance map (ids > 0 are objects) becomes object-vs-background.
    More than two values is an error unless ``encoding`` is ``instance``, or the file is 16/32-bit in
    ``auto`` mode (instance maps are usually stored that way). Several classes: values must be class ids.
    """
    values = np.unique(label)
    if num_classes <= 2:
        if encoding == "instance" or (encoding == "auto" and label.dtype.itemsize > 1 and values.size > 2):
            return (label > 0).astype(np.uint8)
        if values.size > 2:
            shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
            jpeg = (
                " (JPEG compression adds grey levels: save masks as PNG)"
                if path.suffix.lower() in (".jpg", ".jpeg")
                else ""
            )
            raise UserError(
                f"label {path} has {values.size} distinct values ({shown}) but the task is binary{jpeg}: "
                "save it as 0/255, or set data.label_encoding=instance if it is an instance map"
            )
        if values.size == 2 and values[0] != 0:
            return (label == values[1]).astype(np.uint8)
        return (label > 0).astype(np.uint8)
    if values[-1] >= num_classes:
        raise UserError(
            f"label {path} contains value {values[-1]} but model.num_classes={num_classes}: labels must be "
            f"class ids 0..{num_classes - 1} (or raise model.num_classes)"
        )
    return label.astype(np.uint8)
