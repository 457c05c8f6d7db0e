"""The scores that validation and `unetseg evaluate` report, per image and over a set of images.

Pixel error, Dice and IoU of the set are pooled over all its pixels (one confusion matrix); the region
scores (adapted Rand error, V_info) are means of the per-image values, as they are defined per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from unetseg.runtime.distributed import all_reduce_sum
from unetseg.scoring.confusion import ConfusionMatrix
from unetseg.scoring.names import RAND_ERROR, REGION_SCORES, V_INFO
from unetseg.scoring.regions import (
    adapted_rand_error,
    connected_regions,
    contingency,
    fill_background,
    information_score,
)


def image_scores(predicted: np.ndarray, truth: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Every score of one (H, W) predicted class-id map against its truth."""
    confusion = ConfusionMatrix(len(class_names))
    confusion.update(torch.from_numpy(predicted), torch.from_numpy(truth))
    # The challenge thins predicted borders: membrane pixels join the nearest predicted cell, so a thick
    # but closed membrane costs nothing; gaps (merged cells) and spurious membranes (split cells) do.
    table = contingency(connected_regions(truth), fill_background(connected_regions(predicted)))
    return {
        **confusion.scores(class_names),
        RAND_ERROR.key: adapted_rand_error(table),
        V_INFO.key: information_score(table),
    }


class ScoreBoard:
    """Adds images one by one; ``summary`` gives the set's scores (equal on every rank under torchrun)."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        self.confusion = ConfusionMatrix(len(self.class_names))
        self.per_image: dict[str, dict[str, float]] = {}
        # Sum and count of each defined (not NaN) region score, for the mean over images.
        self._region_sums = torch.zeros(2 * len(REGION_SCORES), dtype=torch.float64)

    def add(self, name: str, predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
        scores = image_scores(predicted, truth, self.class_names)
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

    def summary(self) -> dict[str, float]:
        result = self.confusion.scores(self.class_names)
        for index, score in enumerate(REGION_SCORES):
            total, count = self._region_sums[2 * index].item(), self._region_sums[2 * index + 1].item()
            result[score.key] = total / count if count else math.nan
        return result
