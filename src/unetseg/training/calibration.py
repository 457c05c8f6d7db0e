"""``trainer.threshold=auto``: a binary network's decision threshold, chosen after training on the validation
images.

best.pt's network predicts each validation image once, whole (as validation does); each threshold of
:data:`GRID` turns those probabilities into a mask, scored as validation scores it (unetseg.scoring.board). The
chosen threshold is the best by ``trainer.monitor`` (the lowest where lower is better); thresholds whose scores
lie within :data:`TIE` of the best count as equally good, and the lowest pixel error among them decides (a Dice
score is flat near its optimum, the pixel error is not: on ISBI validation slices, thresholds 0.30 and 0.35 were
0.0005 apart in membrane Dice and 0.0015 in pixel error). The one with the lowest pixel error is reported beside
it. Only the validation split is used, never the training images, so a score
on that same split (``unetseg evaluate``'s default, split=val) is flattered by the choice: score a held-out
test set for an honest figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unetseg.data.dataset import LabelledImages
from unetseg.model.head import classes_from_probabilities, to_probabilities
from unetseg.objects.instances import InstanceRule, objects_from, true_objects
from unetseg.runtime.precision import FastPath
from unetseg.scoring.board import ScoreBoard
from unetseg.scoring.confusion import ConfusionMatrix
from unetseg.scoring.names import INSTANCE_SCORES, PIXEL_ERROR, REGION_SCORES, lower_is_better

GRID = tuple(round(0.05 * step, 2) for step in range(1, 20))  # 0.05, 0.10, ..., 0.95
PROVISIONAL = 0.5  # what validation uses while trainer.threshold=auto, and what checkpoints hold until the choice
TIE = 0.001  # scores closer than this to the best are a tie, broken by the pixel error


@dataclass
class ThresholdChoice:
    chosen: float
    by: str  # the score it was chosen by: trainer.monitor, or pixel_error where that does not depend on it
    score: float  # that score at the chosen threshold
    score_at_provisional: float  # ... and at PROVISIONAL, what validation used
    pixel_error_optimum: float  # the threshold with the lowest pixel error
    pixel_error: float  # ... and that pixel error
    images: int  # validation images it was chosen on
    grid: list[dict[str, float]]  # per threshold: the threshold, the score it was chosen by, the pixel error

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "by": self.by,
            "score": self.score,
            f"score_at_{PROVISIONAL}": self.score_at_provisional,
            "pixel_error_optimum": {"threshold": self.pixel_error_optimum, PIXEL_ERROR.key: self.pixel_error},
            "images": self.images,
            "split": "validation",
            "grid": self.grid,
        }


class ThresholdSweep:
    """Scores every threshold of ``grid`` over images added one at a time: the pixel scores (one confusion matrix
    per threshold), or with ``regions`` or ``objects`` every score validation reports (one score board per
    threshold). Those are asked for only when the threshold is chosen by one of them: on five 512² ISBI labels
    with noisy probability maps (this shared 2-core CPU) the 19 thresholds' region scores took 15 s, the pixel
    scores 0.2 s."""

    def __init__(
        self,
        class_names: Sequence[str],
        grid: Sequence[float] = GRID,
        objects: InstanceRule | None = None,
        regions: bool = False,
    ) -> None:
        """``objects``: also the object scores, with objects made by this rule; ``regions``: also the region
        scores (Rand error, V_info)."""
        self.grid = tuple(grid)
        self.class_names = list(class_names)
        self.objects = objects
        self.boards: dict[float, ScoreBoard] = {}
        self.confusions: dict[float, ConfusionMatrix] = {}
        if regions or objects is not None:
            self.boards = {t: ScoreBoard(class_names, objects=objects is not None) for t in self.grid}
        else:
            self.confusions = {t: ConfusionMatrix(len(self.class_names)) for t in self.grid}
        self.images = 0

    def add(
        self, name: str, probabilities: torch.Tensor, label: np.ndarray, instances: np.ndarray | None = None
    ) -> None:
        """One image: its (1, 1, H, W) foreground probabilities, (H, W) class-id label and true instance map."""
        if self.confusions:
            self._count_pixels(probabilities, label)
        truth = true_objects(label, instances) if self.objects is not None else None
        for threshold, board in self.boards.items():
            predicted = classes_from_probabilities(probabilities, threshold)[0].to(torch.uint8).cpu().numpy()
            pair = None
            if self.objects is not None:
                assert truth is not None
                pair = (objects_from(predicted, probabilities[0].cpu().numpy(), self.objects), truth)
            board.add(name, predicted, label, pair)
        self.images += 1

    def _count_pixels(self, probabilities: torch.Tensor, label: np.ndarray) -> None:
        """Every threshold's confusion counts in one pass: how many thresholds each pixel reaches (p >= t, as
        classes_from_probabilities decides, in float32), counted per true class."""
        steps = len(self.grid)
        reached = torch.bucketize(
            probabilities.reshape(-1).float().cpu(), torch.tensor(self.grid, dtype=torch.float32), right=True
        )
        truth = torch.from_numpy(label).reshape(-1).long()  # 0 or 1: a binary network's labels
        histogram = torch.bincount(truth * (steps + 1) + reached, minlength=2 * (steps + 1)).reshape(2, steps + 1)
        # foreground[c, i]: pixels of true class c predicted foreground at grid[i] (those that reach i + 1 or more)
        foreground = histogram.flip(1).cumsum(1).flip(1)[:, 1:]
        totals = histogram.sum(1, keepdim=True)
        for index, threshold in enumerate(self.grid):
            found = foreground[:, index : index + 1]
            self.confusions[threshold].counts += torch.cat([totals - found, found], dim=1)

    def scores(self) -> dict[float, dict[str, float]]:
        if self.confusions:
            return {t: confusion.scores(self.class_names) for t, confusion in self.confusions.items()}
        return {threshold: board.summary() for threshold, board in self.boards.items()}


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _best(values: dict[float, float], lower: bool) -> float | None:
    """The threshold with the best finite value; among equals the one nearest PROVISIONAL (then the lower)."""
    finite = {threshold: value for threshold, value in values.items() if _finite(value)}
    if not finite:
        return None
    best = min(finite.values()) if lower else max(finite.values())
    return min((t for t, value in finite.items() if value == best), key=lambda t: (abs(t - PROVISIONAL), t))


def choose_threshold(scores: dict[float, dict[str, float]], monitor: str, images: int) -> ThresholdChoice:
    """The threshold with the best ``monitor`` score (the pixel error's optimum when the monitor does not depend
    on the threshold, as val_loss, or is undefined at every threshold; PROVISIONAL when nothing is defined)."""
    pixel_errors = {threshold: row.get(PIXEL_ERROR.key, math.nan) for threshold, row in scores.items()}
    by = monitor
    by_monitor = {threshold: row.get(monitor, math.nan) for threshold, row in scores.items()}
    chosen = _best(by_monitor, lower_is_better(by))
    if chosen is None:
        by, chosen = PIXEL_ERROR.key, _best(pixel_errors, lower=True)
    elif by != PIXEL_ERROR.key:  # a tie within TIE of the best: the lowest pixel error of those
        best = by_monitor[chosen]
        tied = {t: pixel_errors[t] for t, value in by_monitor.items() if _finite(value) and abs(value - best) <= TIE}
        chosen = _best(tied, lower=True) or chosen
    pixel_optimum = _best(pixel_errors, lower=True)
    chosen = PROVISIONAL if chosen is None else chosen
    pixel_optimum = PROVISIONAL if pixel_optimum is None else pixel_optimum
    rows = [
        {"threshold": threshold, **{key: row.get(key, math.nan) for key in dict.fromkeys([by, PIXEL_ERROR.key])}}
        for threshold, row in sorted(scores.items())
    ]
    return ThresholdChoice(
        chosen=chosen,
        by=by,
        score=scores[chosen].get(by, math.nan) if chosen in scores else math.nan,
        score_at_provisional=scores[PROVISIONAL].get(by, math.nan) if PROVISIONAL in scores else math.nan,
        pixel_error_optimum=pixel_optimum,
        pixel_error=pixel_errors.get(pixel_optimum, math.nan),
        images=images,
        grid=rows,
    )


def calibrate(
    network: torch.nn.Module,
    items: LabelledImages,
    class_names: Sequence[str],
    fast: FastPath,
    monitor: str,
    objects: InstanceRule | None = None,
    grid: Sequence[float] = GRID,
) -> ThresholdChoice:
    """Predict each image of ``items`` (the validation split) once with ``network`` (a binary one), whole and one at
    a time, and choose the threshold of ``grid`` by ``monitor`` (see :func:`choose_threshold`). ``objects``:
    the rule validation makes objects with, used when the monitor is an object score."""
    needs_objects = monitor in {score.key for score in INSTANCE_SCORES}
    regions = monitor in {score.key for score in REGION_SCORES}
    sweep = ThresholdSweep(class_names, grid, objects if needs_objects else None, regions)
    network.eval()
    with torch.inference_mode():
        for index in range(len(items)):
            x = fast.prepare_input(torch.from_numpy(items.images[index])[None])
            with fast.autocast():
                logits = network(x)
            probabilities = to_probabilities(logits)
            sweep.add(items.names[index], probabilities, items.labels[index], items.instances_of(index))
    return choose_threshold(sweep.scores(), monitor, sweep.images)
