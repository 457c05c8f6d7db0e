"""Region scores of the ISBI 2012 challenge: adapted Rand error and V_info on connected components.

Both compare two labellings of the cells (not of the pixels): each connected region of the foreground
classes is one segment. As in the challenge (and ``skimage.metrics.adapted_rand_error``), pixels that
are background in the *truth* are left out. Predicted background pixels would form one segment of their
own; :func:`fill_background` first gives each to its nearest predicted cell (the challenge's border
thinning), so a thick membrane costs nothing and a gap in one (two cells merged) costs a lot.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def connected_regions(classes: np.ndarray) -> np.ndarray:
    """(H, W) class ids → int32 region ids: 0 for background (class 0), 1..n for 4-connected regions of
    the other classes. 4-connectivity: a one-pixel diagonal membrane still separates two cells."""
    foreground = (classes > 0).astype(np.uint8)
    _, regions = cv2.connectedComponents(foreground, connectivity=4, ltype=cv2.CV_32S)
    return regions


def contingency(true_regions: np.ndarray, predicted_regions: np.ndarray) -> np.ndarray:
    """Overlap counts n_ij between true segment i and predicted segment j, over the pixels whose true
    region is not background; returned as a dense (true segments, predicted segments) int64 matrix."""
    counted = true_regions.ravel() != 0
    true_ids = np.unique(true_regions.ravel()[counted], return_inverse=True)[1]
    predicted_ids = np.unique(predicted_regions.ravel()[counted], return_inverse=True)[1]
    rows = int(true_ids.max()) + 1 if true_ids.size else 0
    columns = int(predicted_ids.max()) + 1 if predicted_ids.size else 0
    flat = np.bincount(true_ids * columns + predicted_ids, minlength=rows * columns)
    return flat.reshape(rows, columns).astype(np.int64)


def adapted_rand_error(table: np.ndarray) -> float:
    """1 − the Rand F-score (V_rand) from a contingency table; NaN when the truth has no pair of pixels
    in one cell (nothing to score). Pair counts as in the challenge: Σ n² − Σ n over cells."""
    if table.size == 0:
        return math.nan
    counts = table.astype(np.float64)
    true_sizes, predicted_sizes = counts.sum(axis=1), counts.sum(axis=0)
    total = counts.sum()
    joint_pairs = (counts * counts).sum() - total
    true_pairs = true_sizes @ true_sizes - total
    predicted_pairs = predicted_sizes @ predicted_sizes - total
    denominator = 0.5 * (true_pairs + predicted_pairs)
    if denominator <= 0:
        return math.nan
    return float(1.0 - joint_pairs / denominator)


def information_score(table: np.ndarray) -> float:
    """V_info: the F-score of information precision I(S;T)/H(S) and recall I(S;T)/H(T), S the predicted
    and T the true segmentation. 1 when both agree; NaN when the truth has no cell pixel."""
    if table.size == 0:
        return math.nan
    h_true, h_predicted, mutual = entropies(table)
    if h_true + h_predicted <= 0:
        return 1.0  # one segment in each: identical partitions of the counted pixels
    return 2.0 * mutual / (h_true + h_predicted)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return -float(np.sum(p * np.log(p)))


def entropies(table: np.ndarray) -> tuple[float, float, float]:
    """H(T), H(S) and I(S;T) of a contingency table, in nats (for cross-checks and reports)."""
    p = table.astype(np.float64) / max(table.sum(), 1)
    p_true, p_predicted = p.sum(axis=1), p.sum(axis=0)
    h_true, h_predicted = _entropy(p_true), _entropy(p_predicted)
    rows, columns = np.nonzero(p)
    joint = p[rows, columns]
    mutual = float(np.sum(joint * np.log(joint / (p_true[rows] * p_predicted[columns]))))
    return h_true, h_predicted, mutual


def fill_background(regions: np.ndarray) -> np.ndarray:
    """Every background pixel joins its nearest region (Euclidean), so a predicted membrane is thinned
    to the line between two cells. Regions left as they are when there is no region at all."""
    background = regions == 0
    if not background.any() or background.all():
        return regions
    # distanceTransformWithLabels labels each zero pixel of its input (here: the region pixels) in
    # raster order and gives every pixel the label of its nearest one.
    _, nearest = cv2.distanceTransformWithLabels(
        background.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL
    )
    region_of_label = np.concatenate([[0], regions[~background]]).astype(np.int32)
    return region_of_label[nearest]
