"""Instance scores as the instance-segmentation benchmarks define them (Data Science Bowl 2018, StarDist,
cellpose): predicted and true objects are matched one to one, and a match counts at IoU threshold t when
the pair's IoU is at least t.

- For each t in 0.50, 0.55, ..., 0.95: true positives (matches), false positives (unmatched predicted
  objects), false negatives (unmatched true objects), precision, recall, F1 and the Data Science Bowl's
  "average precision" TP / (TP + FP + FN).
- Mean matched IoU (segmentation quality) and panoptic quality = mean matched IoU × F1, at t = 0.5.

Matching, exact and without a dense objects × objects matrix: only pairs with IoU ≥ 0.5 can count. An
object in a pair with IoU > 0.5 has no other partner with IoU ≥ 0.5 (the two overlaps would exceed the
object), so those pairs are matches as they are, at every threshold they reach. What remains are pairs at
exactly 0.5 (an object cut into two equal halves), where one object can have two partners: the largest
set of disjoint ones is a maximum bipartite matching (``scipy.sparse.csgraph.maximum_bipartite_matching``,
on a sparse graph of those pairs only). Undefined ratios (0/0, e.g. precision with no predicted object)
are NaN and left out of means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

THRESHOLDS = tuple(round(0.5 + 0.05 * step, 2) for step in range(10))


@dataclass
class InstanceCounts:
    """Object counts and matches of one image, or summed over a set of images."""

    true_objects: int
    predicted_objects: int
    matches: np.ndarray  # (len(THRESHOLDS),) number of matched pairs at each threshold
    matched_iou_sum: float  # total IoU of the matches at 0.5

    def __add__(self, other: InstanceCounts) -> InstanceCounts:
        return InstanceCounts(
            self.true_objects + other.true_objects,
            self.predicted_objects + other.predicted_objects,
            self.matches + other.matches,
            self.matched_iou_sum + other.matched_iou_sum,
        )

    @staticmethod
    def empty() -> InstanceCounts:
        return InstanceCounts(0, 0, np.zeros(len(THRESHOLDS), np.int64), 0.0)

    def per_threshold(self) -> dict[str, dict[str, float]]:
        """For each threshold ("0.50", ...): tp, fp, fn, precision, recall, f1, ap."""
        table = {}
        for threshold, tp in zip(THRESHOLDS, self.matches.tolist(), strict=True):
            fp, fn = self.predicted_objects - tp, self.true_objects - tp
            table[f"{threshold:.2f}"] = {
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": _ratio(tp, tp + fp),
                "recall": _ratio(tp, tp + fn),
                "f1": _ratio(2 * tp, 2 * tp + fp + fn),
                "ap": _ratio(tp, tp + fp + fn),
            }
        return table

    def scores(self) -> dict[str, float]:
        """The headline scores: ap50, ap75, ap (mean over 0.50…0.95), f1_50, matched_iou, pq, count_error."""
        table = self.per_threshold()
        aps = [row["ap"] for row in table.values()]
        tp50 = int(self.matches[0])
        matched_iou = _ratio(self.matched_iou_sum, tp50)
        f1 = table["0.50"]["f1"]
        return {
            "ap50": table["0.50"]["ap"],
            "ap75": table["0.75"]["ap"],
            "ap": math.nan if any(math.isnan(a) for a in aps) else float(np.mean(aps)),
            "f1_50": f1,
            "matched_iou": matched_iou,
            "pq": math.nan if math.isnan(f1) else (0.0 if tp50 == 0 else matched_iou * f1),
            "count_error": float(abs(self.predicted_objects - self.true_objects)),
        }


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator else math.nan


def pair_ious(truth: np.ndarray, predicted: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """(true count, predicted count, true ids, predicted ids, IoU) of every overlapping pair. Ids need not
    be consecutive; 0 is background in both maps."""
    if truth.shape != predicted.shape:
        raise ValueError(f"instance maps differ in shape: {truth.shape} and {predicted.shape}")
    true_ids, true_areas = np.unique(truth[truth > 0], return_counts=True)
    predicted_ids, predicted_areas = np.unique(predicted[predicted > 0], return_counts=True)
    both = (truth > 0) & (predicted > 0)
    t_index = np.searchsorted(true_ids, truth[both])
    p_index = np.searchsorted(predicted_ids, predicted[both])
    pairs, intersections = np.unique(
        t_index.astype(np.int64) * max(1, predicted_ids.size) + p_index, return_counts=True
    )
    rows, columns = np.divmod(pairs, max(1, predicted_ids.size))
    union = true_areas[rows] + predicted_areas[columns] - intersections
    return true_ids.size, predicted_ids.size, rows, columns, intersections / union


def match_instances(truth: np.ndarray, predicted: np.ndarray) -> InstanceCounts:
    """Match the objects of two (H, W) instance maps one to one at every threshold of THRESHOLDS."""
    true_count, predicted_count, rows, columns, ious = pair_ious(truth, predicted)
    above = ious > 0.5  # disjoint: each of these pairs is a match at every threshold up to its IoU
    matches = np.array([int(np.count_nonzero(ious[above] >= threshold)) for threshold in THRESHOLDS], np.int64)
    matched_iou_sum = float(ious[above].sum())
    tied = ious == 0.5
    if tied.any():
        tied_rows, row_index = np.unique(rows[tied], return_inverse=True)
        tied_columns, column_index = np.unique(columns[tied], return_inverse=True)
        from scipy.sparse import csr_matrix  # imported when used (rare exact-0.5 ties): scipy.sparse is slow to import
        from scipy.sparse.csgraph import maximum_bipartite_matching

        graph = csr_matrix((np.ones(row_index.size), (row_index, column_index)), (tied_rows.size, tied_columns.size))
        extra = int(np.count_nonzero(maximum_bipartite_matching(graph, perm_type="column") >= 0))
        matches[0] += extra
        matched_iou_sum += 0.5 * extra
    return InstanceCounts(true_count, predicted_count, matches, matched_iou_sum)
