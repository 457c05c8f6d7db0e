"""What the planner knows of a data set: counts and sizes from every file's header, and from a sample of decoded
pairs the bit depth, channels, intensities, class frequencies and the sizes of the objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from unetseg.config import DataConfig, DataSource
from unetseg.data.dataset import folder_pairs, label_rule
from unetseg.data.decoding import DecodedPair, decode_pair, decoded
from unetseg.data.normalize import PercentileNormalizer
from unetseg.data.synthetic import synthetic_sample
from unetseg.io.limits import PixelLimit, read_header
from unetseg.runtime.paths import user_path

SAMPLE = 16  # pairs decoded for the statistics, spread evenly over the set
THIN_GAP = 3  # px: background this close to an object on a crowded image is a border between objects


@dataclass
class DataFingerprint:
    images: int
    heights: list[int]
    widths: list[int]
    channels: int
    bits: int
    intensity_percentiles: dict[str, float]  # raw values at 1, 50 and 99 %
    class_fractions: list[float]  # of the labelled pixels, per class id
    object_diameters: dict[str, float] = field(default_factory=dict)  # median, p90 (equivalent diameters, px)
    objects_per_image: float = 0.0
    thin_background: float = 0.0  # share of background pixels within THIN_GAP px of an object

    @property
    def smallest_side(self) -> int:
        return min(min(self.heights), min(self.widths))

    def to_dict(self) -> dict[str, object]:
        return {
            "images": self.images,
            "size": f"{int(np.median(self.widths))}×{int(np.median(self.heights))} (median; smallest side "
            f"{self.smallest_side})",
            "channels": self.channels,
            "bits": self.bits,
            "intensity_percentiles": self.intensity_percentiles,
            "class_fractions": [round(f, 4) for f in self.class_fractions],
            "object_diameters": self.object_diameters,
            "objects_per_image": round(self.objects_per_image, 1),
            "thin_background": round(self.thin_background, 3),
        }


def _objects(classes: np.ndarray, instances: np.ndarray | None) -> tuple[list[float], int, float]:
    """(equivalent diameters, object count, thin-background share) of one label: objects are the instance map's
    where there is one, else the connected regions of the foreground (every class but 0)."""
    foreground = (classes > 0).astype(np.uint8)
    if instances is not None:
        ids, areas = np.unique(instances[instances > 0], return_counts=True)
        count = len(ids)
    else:
        count, _, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=4)
        areas, count = stats[1:, cv2.CC_STAT_AREA], count - 1
    diameters = [float(np.sqrt(4 * a / np.pi)) for a in areas]
    background = foreground == 0
    if not background.any() or not foreground.any():
        return diameters, count, 0.0
    distance = cv2.distanceTransform(background.astype(np.uint8), cv2.DIST_L2, 3)
    return diameters, count, float((distance[background] <= THIN_GAP).mean())


def fingerprint_pairs(pairs: list[DecodedPair], headers: list[tuple[int, int]], num_classes: int) -> DataFingerprint:
    raw = pairs[0].raw
    values = np.concatenate([p.raw.reshape(-1)[:: max(1, p.raw.size // 100_000)] for p in pairs])
    counts = np.zeros(max(2, num_classes), np.int64)
    diameters: list[float] = []
    objects, thin = 0, []
    for pair in pairs:
        counts += np.bincount(pair.classes.reshape(-1), minlength=len(counts))[: len(counts)]
        found, count, share = _objects(pair.classes, pair.instances)
        diameters += found
        objects += count
        thin.append(share)
    percentiles = np.percentile(values, [1, 50, 99])
    return DataFingerprint(
        images=len(headers),
        heights=[h for h, _ in headers],
        widths=[w for _, w in headers],
        channels=raw.shape[0],
        bits=8 * raw.dtype.itemsize,
        intensity_percentiles={name: float(v) for name, v in zip(("p1", "p50", "p99"), percentiles, strict=True)},
        class_fractions=[float(share) for share in counts / max(1, counts.sum())],
        object_diameters={
            "median": round(float(np.median(diameters)), 1) if diameters else 0.0,
            "p90": round(float(np.percentile(diameters, 90)), 1) if diameters else 0.0,
        },
        objects_per_image=objects / len(pairs),
        thin_background=float(np.mean(thin)),
    )


def fingerprint_data(data: DataConfig, channels: int, num_classes: int) -> DataFingerprint:
    """The fingerprint of the training folder (data.root), or of the synthetic generator's images."""
    rule = label_rule(data, num_classes)
    normalizer = PercentileNormalizer(data.normalization.low_percentile, data.normalization.high_percentile)
    if data.source == DataSource.synthetic:
        syn = data.synthetic
        pairs = []
        for index in range(min(SAMPLE, syn.num_images)):
            image, objects = synthetic_sample(syn.kind.value, syn.seed, index, syn.size)
            pairs.append(decoded(str(index), image[None], normalizer, rule.classes_of_objects(objects), objects))
        return fingerprint_pairs(pairs, [(syn.size, syn.size)] * syn.num_images, num_classes)
    assert data.root is not None  # check_train
    pairing = folder_pairs(user_path(data.root), data.image_dir, data.label_dir, data.label_suffix)
    limit = PixelLimit(data.max_pixels, "data.max_pixels")
    headers = []
    for image_path, _ in pairing.pairs:
        header = read_header(image_path)
        limit.check(header, str(image_path))
        headers.append((header.height, header.width) if header else (0, 0))
    picks = np.unique(np.linspace(0, len(pairing.pairs) - 1, min(SAMPLE, len(pairing.pairs))).round().astype(int))
    pairs = [decode_pair(*pairing.pairs[i], channels, rule, normalizer, limit) for i in picks]
    for index, pair in zip(picks, pairs, strict=True):  # a header that could not be read: the decoded size
        headers[index] = pair.classes.shape
    return fingerprint_pairs(pairs, [h if h != (0, 0) else pairs[0].classes.shape for h in headers], num_classes)


def folder_name(data: DataConfig) -> str:
    return "synthetic" if data.source == DataSource.synthetic else str(Path(str(data.root)))
