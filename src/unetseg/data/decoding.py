"""One labelled pair decoded and checked, the same way for the in-memory path and the disk cache: the image in
its own dtype with its normalisation, the label's class ids and instance map, and a digest of all of it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetseg.data.labels import LabelRule
from unetseg.data.normalize import PercentileNormalizer, Scaling
from unetseg.io.images import read_image, read_label
from unetseg.io.limits import PixelLimit
from unetseg.runtime.errors import UserError


@dataclass
class DecodedPair:
    name: str
    raw: np.ndarray  # (C, H, W) in the file's dtype
    scaling: Scaling  # the image's normalisation: scaling(raw) is what the network sees
    classes: np.ndarray  # uint8 (H, W) class ids
    instances: np.ndarray | None  # int32 (H, W) object ids where the label file is an instance map
    digest: str  # see :func:`item_digest`


def item_digest(name: str, raw: np.ndarray, scaling: Scaling, classes: np.ndarray) -> str:
    """What one training item is: its name, its pixels as read, their normalisation and its class ids. The same
    whichever path holds the data, so a run resumed with the data in memory or in the disk cache matches."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{name}|{raw.shape}|{raw.dtype}|{scaling.low!r}|{scaling.high!r}|{classes.shape}|".encode())
    digest.update(np.ascontiguousarray(raw).data)
    digest.update(np.ascontiguousarray(classes).data)
    return digest.hexdigest()


def decoded(
    name: str, raw: np.ndarray, normalizer: PercentileNormalizer, classes: np.ndarray, instances: np.ndarray | None
) -> DecodedPair:
    scaling = normalizer.fit(raw)
    return DecodedPair(name, raw, scaling, classes, instances, item_digest(name, raw, scaling, classes))


def decode_pair(
    image_path: Path,
    label_path: Path,
    channels: int,
    rule: LabelRule,
    normalizer: PercentileNormalizer,
    limit: PixelLimit,
) -> DecodedPair:
    """Read and check one image and its label (sizes, values, classes); every problem names its file."""
    image = read_image(image_path, channels, limit)
    label = read_label(label_path, limit)
    if image.shape[1:] != label.shape:
        raise UserError(
            f"{image_path.name} is {image.shape[2]}×{image.shape[1]} but its label {label_path} is "
            f"{label.shape[1]}×{label.shape[0]}: image and label must be the same size"
        )
    classes, objects = rule.apply(label, label_path)
    return decoded(image_path.stem, image, normalizer, classes, objects)
