"""Separating a predicted class map into objects (instance label maps), by one of three rules:

- ``boundary``: networks trained with ``data.target=boundary`` (background / interior / boundary). The
  seeds are the 4-connected regions of confident interior, p(interior) − p(boundary) ≥ ``seed_margin``
  (0.5: chosen on the validation images of ``experiment=nuclei``, where it merged fewer touching nuclei
  than the plain argmax); a seeded watershed (scikit-image) grows them over the boundary probability,
  within the foreground (interior or boundary), so each pixel joins the object whose seed it is closest to
  in the probability landscape.
- ``distance``: plain foreground networks (two classes). The seeds are the maxima of the foreground's
  distance transform at least ``min_distance`` px apart, one region per seed by a watershed on the negated
  distance: two touching round objects, joined by a neck, split at the neck.
- ``membrane``: ISBI-style networks whose class 0 is a membrane between cells. The cells are the
  4-connected regions enclosed by membrane, and each membrane pixel (and each region under ``min_size``)
  joins its nearest cell: the border thinning of the ISBI challenge (unetseg.scoring.regions).

``auto`` takes ``boundary`` for boundary networks, ``membrane`` when class 0 is named "membrane", and
``distance`` otherwise. Objects smaller than ``min_size`` px are dropped; ids are 1..n, in raster order of
their seeds. Objects touching the image edge are kept (``touching_edge`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from unetseg.data.targets import BOUNDARY, INTERIOR
from unetseg.runtime.errors import UserError
from unetseg.scoring.regions import connected_regions, fill_background

BAND_ROWS = 512  # the watershed's bands (see flood)


@dataclass(frozen=True)
class InstanceRule:
    """How a network's class map becomes objects (a resolved method, never ``auto``)."""

    method: str
    min_size: int = 10
    min_distance: int = 5
    seed_margin: float = 0.5

    @property
    def needs_boundary_probability(self) -> bool:
        return self.method == "boundary"

    def describe(self) -> str:
        extra = {"distance": f", min_distance {self.min_distance}", "boundary": f", seed_margin {self.seed_margin}"}
        return f"objects by {self.method} watershed (min_size {self.min_size}{extra.get(self.method, '')})"


def resolve_rule(method: str, target: str, class_names: list[str], **settings: Any) -> InstanceRule:
    """The rule for a network trained for ``target`` with these classes (``settings``: min_size,
    min_distance, seed_margin; InstanceRule's defaults otherwise); one line if none fits."""
    binary = len(class_names) <= 2
    if method == "auto":
        if target == "boundary":
            method = "boundary"
        elif binary:
            method = "membrane" if class_names[0].lower() == "membrane" else "distance"
        else:
            raise UserError(
                f"this network has {len(class_names)} classes ({', '.join(class_names)}) and no foreground to "
                "split into objects: instances need a two-class network or one trained with data.target=boundary"
            )
    if method == "boundary" and target != "boundary":
        raise UserError(
            "instances.method=boundary needs a network trained with data.target=boundary; this one was trained "
            "on masks: use instances.method=distance (or auto)"
        )
    if method in ("distance", "membrane") and not binary:
        raise UserError(
            f"instances.method={method} needs a two-class network; this one has {len(class_names)} classes "
            f"({', '.join(class_names)}): use instances.method=auto"
        )
    return InstanceRule(method, **settings)


def boundary_evidence(probabilities: np.ndarray, rule: InstanceRule) -> tuple[np.ndarray, np.ndarray]:
    """(3, H, W) probabilities of a boundary network (or a band of rows of them) → what the ``boundary``
    rule needs, compactly: (boundary probability × 255 as uint8, confident interior as bool)."""
    boundary = np.rint(np.clip(probabilities[BOUNDARY], 0, 1) * 255).astype(np.uint8)
    return boundary, probabilities[INTERIOR] - probabilities[BOUNDARY] >= rule.seed_margin


def objects_from(classes: np.ndarray, probabilities: np.ndarray | None, rule: InstanceRule) -> np.ndarray:
    """A whole image's objects from its class ids and (K, H, W) probabilities (used by the boundary rule)."""
    evidence = None
    if probabilities is not None and rule.needs_boundary_probability:
        evidence = boundary_evidence(probabilities, rule)
    return make_instances(classes, rule, evidence)


def instance_dtype(count: int) -> type[np.unsignedinteger[Any]]:
    """uint16 for up to 65,535 objects, else uint32."""
    return np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32


def make_instances(
    classes: np.ndarray, rule: InstanceRule, evidence: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """(H, W) class ids → (H, W) object ids (uint16, or uint32 past 65,535 objects), 0 = background.

    ``evidence`` (``boundary_evidence``) is what the ``boundary`` rule floods over and seeds from; without
    it the seeds are the interior class and the flood runs over the boundary class.
    """
    if rule.method == "membrane":
        # Specks join their neighbours with the membrane, instead of leaving holes.
        objects = fill_background(_drop_small(connected_regions(classes), rule.min_size))
    elif rule.method == "boundary":
        foreground = classes > 0
        if evidence is None:
            elevation, confident = (classes == BOUNDARY).astype(np.uint8), classes == INTERIOR
        else:
            elevation, confident = evidence
        confident = (confident & foreground).astype(np.uint8)
        _, seeds = cv2.connectedComponents(confident, connectivity=4, ltype=cv2.CV_32S)
        del confident
        objects = flood(elevation, seeds, foreground)
        del seeds  # the large temporaries go before the next ones are made
        objects = _keep_unseeded(objects, foreground)
    else:
        foreground = (classes > 0).astype(np.uint8)
        _, components = cv2.connectedComponents(foreground, connectivity=4, ltype=cv2.CV_32S)
        distance = cv2.distanceTransform(foreground, cv2.DIST_L2, cv2.DIST_MASK_5)
        from skimage.feature import peak_local_max  # imported when used: scikit-image takes ~0.5 s to import

        peaks = peak_local_max(
            distance, min_distance=max(1, rule.min_distance), labels=components, exclude_border=False
        )
        peaks = peaks[np.lexsort((peaks[:, 1], peaks[:, 0]))]  # raster order, so ids run top to bottom
        seeds = np.zeros(classes.shape, np.int32)
        seeds[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
        del components
        np.negative(distance, out=distance)  # flood from the centres outwards
        objects = flood(distance, seeds, foreground > 0)
        del seeds, distance
        objects = _keep_unseeded(objects, foreground > 0)
    return _finish(objects, rule.min_size)


def flood(elevation: np.ndarray, seeds: np.ndarray, mask: np.ndarray, rows: int = BAND_ROWS) -> np.ndarray:
    """scikit-image's seeded watershed within ``mask``, band by band in bounded memory, with the result of
    one whole-image call.

    Why: ``watershed`` keeps about 30 bytes per pixel of temporaries (a float64 copy of the elevation,
    padded copies of everything): 2 GB at 8192². A masked flood never crosses from one connected
    component of the mask to another, so each band of ``rows`` rows is grown to hold every component it
    touches whole, overlapping windows are merged, and each window is flooded once, with the seeds numbered
    over the whole image: the same objects, and memory bounded by the largest window instead of the image
    (one component spanning the image is one whole-image flood, never one per band).
    """
    from skimage.segmentation import watershed  # imported when used (see peak_local_max)

    height = elevation.shape[0]
    if height <= 2 * rows:
        return watershed(elevation, seeds, mask=mask)
    _, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    tops = stats[:, cv2.CC_STAT_TOP]
    bottoms = tops + stats[:, cv2.CC_STAT_HEIGHT]
    windows: list[list[int]] = []  # [low, high) row ranges, disjoint, top to bottom
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        touched = np.unique(components[top:bottom])
        touched = touched[touched > 0]
        if touched.size == 0:
            continue
        low, high = min(top, int(tops[touched].min())), max(bottom, int(bottoms[touched].max()))
        if windows and low < windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], high)
        else:
            windows.append([low, high])
    del components
    objects = np.zeros(elevation.shape, np.int32)
    for low, high in windows:
        window = watershed(elevation[low:high], seeds[low:high], mask=mask[low:high])
        inside = mask[low:high]
        objects[low:high][inside] = window[inside]  # the window's own components; nothing outside the mask
    return objects


def _sizes(objects: np.ndarray) -> np.ndarray:
    """Pixels per id, counted a band at a time (np.bincount would first copy the map as int64)."""
    count = int(objects.max()) + 1
    sizes = np.zeros(count, np.int64)
    for top in range(0, objects.shape[0], BAND_ROWS):
        sizes += np.bincount(objects[top : top + BAND_ROWS].ravel(), minlength=count)
    return sizes


def _drop_small(regions: np.ndarray, min_size: int) -> np.ndarray:
    sizes = _sizes(regions)
    small = sizes < min_size
    small[0] = False
    return np.where(small[regions], 0, regions) if small.any() else regions


def _keep_unseeded(objects: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Foreground the watershed left empty (a region without a seed) becomes objects of its own."""
    missed = foreground & (objects == 0)
    if not missed.any():
        return objects
    _, pieces = cv2.connectedComponents(missed.astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    objects = objects.astype(np.int32, copy=False)
    objects[missed] = pieces[missed] + objects.max()
    return objects


def _finish(objects: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects under ``min_size`` px and renumber the rest 1..n in their order, in the smallest dtype.
    A lookup table per id (no sort of the pixels)."""
    sizes = _sizes(objects)
    keep = sizes >= min_size
    keep[0] = False
    lookup = np.zeros(sizes.size, np.int64)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1)
    dtype = instance_dtype(int(keep.sum()))
    return lookup.astype(dtype)[objects]


def true_objects(label: np.ndarray, instances: np.ndarray | None) -> np.ndarray:
    """The true objects of a labelled image: its instance map, or else the 4-connected regions of the
    label's foreground classes (the cells evaluate's Rand error compares)."""
    return connected_regions(label) if instances is None else instances


def touching_edge(objects: np.ndarray) -> np.ndarray:
    """The sorted ids of the objects with a pixel on the image's edge."""
    edge = np.concatenate([objects[0], objects[-1], objects[:, 0], objects[:, -1]])
    ids = np.unique(edge)
    return ids[ids > 0]
