"""The scores that validation and `unetseg evaluate` report, per image and over a set of images.

Pixel error, Dice and IoU of the set are pooled over all its pixels (one confusion matrix); the region
scores (adapted Rand error, V_info) are means of the per-image values, as they are defined per image.
When the predicted objects are given, the object scores (unetseg.scoring.instances) pool the matches of
every image (as StarDist's data-set scores do); the count error is the mean over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from unetseg.runtime.distributed import all_reduce_sum
from unetseg.scoring.confusion import ConfusionMatrix
from unetseg.scoring.instances import InstanceCounts, match_instances
from unetseg.scoring.names import COUNT_ERROR, RAND_ERROR, REGION_SCORES, V_INFO
from unetseg.scoring.regions import (
    adapted_rand_error,
    connected_regions,
    contingency,
    fill_background,
    information_score,
)


def image_scores(predicted: np.ndarray, truth: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Every pixel and region score of one (H, W) predicted class-id map against its truth."""
    confusion = ConfusionMatrix(len(class_names))
    confusion.update(torch.from_numpy(predicted), torch.from_numpy(truth))
    # The challenge thins predicted borders: membrane pixels join the nearest predicted cell, so a thick
    # but closed membrane costs nothing; gaps (merged cells) and spurious membranes (split cells) do.
    # (The membrane rule of unetseg.objects makes its cells with these same functions.)
    table = contingency(connected_regions(truth), fill_background(connected_regions(predicted)))
    return {
        **confusion.scores(class_names),
        RAND_ERROR.key: adapted_rand_error(table),
        V_INFO.key: information_score(table),
    }


class ScoreBoard:
    """Adds images one by one; ``summary`` gives the set's scores (equal on every rank under torchrun)."""

    def __init__(self, class_names: Sequence[str], objects: bool = False) -> None:
        """``objects``: also the object scores (then every ``add`` gives the instance maps)."""
        self.class_names = list(class_names)
        self.confusion = ConfusionMatrix(len(self.class_names))
        self.per_image: dict[str, dict[str, float]] = {}
        # Sum and count of each defined (not NaN) region score, for the mean over images.
        self._region_sums = torch.zeros(2 * len(REGION_SCORES), dtype=torch.float64)
        self.objects = InstanceCounts.empty() if objects else None  # summed over the images
        self._count_errors = [0.0, 0.0]  # sum of |predicted - true| object counts, images

    def add(
        self,
        name: str,
        predicted: np.ndarray,
        truth: np.ndarray,
        objects: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> dict[str, float]:
        """Score one image; ``objects``: its (predicted, true) instance maps, for the object scores."""
        scores = image_scores(predicted, truth, self.class_names)
        if self.objects is not None:
            assert objects is not None, "a board made with objects=True needs the instance maps of every image"
            counts = match_instances(objects[1], objects[0])
            self.objects += counts
            scores.update(counts.scores())
            self._count_errors[0] += scores[COUNT_ERROR.key]
            self._count_errors[1] += 1
        self.confusion.update(torch.from_numpy(predicted), torch.from_numpy(truth))
        for index, score in enumerate(REGION_SCORES):
            if not math.isnan(scores[score.key]):
                self._region_sums[2 * index] += scores[score.key]
                self._region_sums[2 * index + 1] += 1
        self.per_image[name] = scores
        return scores

    def reduce_across_ranks(self, device: torch.device) -> None:
        """Under torchrun, add up every rank's pixel counts and region sums (a no-op alone)."""
        self.confusion.counts = all_reduce_sum(self.confusion.counts.to(device)).cpu()
        self._region_sums = all_reduce_sum(self._region_sums.to(device)).cpu()
        if self.objects is not None:
            o = self.objects
            packed = torch.tensor(
                [o.true_objects, o.predicted_objects, *o.matches.tolist(), o.matched_iou_sum, *self._count_errors],
                dtype=torch.float64,
            )
            total = all_reduce_sum(packed.to(device)).cpu().tolist()
            matches = np.array([round(value) for value in total[2:-3]], np.int64)
            self.objects = InstanceCounts(round(total[0]), round(total[1]), matches, total[-3])
            self._count_errors = total[-2:]

    def summary(self) -> dict[str, float]:
        result = self.confusion.scores(self.class_names)
        for index, score in enumerate(REGION_SCORES):
            total, count = self._region_sums[2 * index].item(), self._region_sums[2 * index + 1].item()
            result[score.key] = total / count if count else math.nan
        if self.objects is not None:
            result.update(self.objects.scores())
            errors, images = self._count_errors
            result[COUNT_ERROR.key] = errors / images if images else math.nan
        return result
