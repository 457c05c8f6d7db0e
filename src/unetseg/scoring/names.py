"""The one list of score names: the key each score has in metrics files and in ``trainer.monitor``, its
column title, and whether lower is better. Tables, the monitor, the config checks and the sweep summary all
read them from here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    key: str  # in metrics.json / metrics.jsonl, and what trainer.monitor names
    title: str  # column title in tables
    lower_is_better: bool = False
    in_tables: bool = True  # a column of the console tables (else metrics files only: tables stay readable)


LOSS = Score("val_loss", "loss", lower_is_better=True)
PIXEL_ERROR = Score("pixel_error", "pixel error", lower_is_better=True)
DICE = Score("dice", "Dice")  # mean over the classes
IOU = Score("iou", "IoU")  # mean over the classes
RAND_ERROR = Score("rand_error", "Rand error", lower_is_better=True)
V_INFO = Score("v_info", "V_info")
REGION_SCORES = (RAND_ERROR, V_INFO)  # defined per image; a set's value is the mean over its images
# Object scores (unetseg.scoring.instances): a set's value pools the matches of all its images, except the
# count error (mean over images of |predicted objects - true objects|).
AP50 = Score("ap50", "AP50")
AP75 = Score("ap75", "AP75", in_tables=False)
AP = Score("ap", "AP 50-95", in_tables=False)
F1_50 = Score("f1_50", "F1 50", in_tables=False)
MATCHED_IOU = Score("matched_iou", "matched IoU", in_tables=False)
PQ = Score("pq", "PQ")
COUNT_ERROR = Score("count_error", "count error", lower_is_better=True)
INSTANCE_SCORES = (AP50, AP75, AP, F1_50, MATCHED_IOU, PQ, COUNT_ERROR)


def dice_of(class_name: str) -> Score:
    return Score(f"dice_{class_name}", f"Dice {class_name}")


def iou_of(class_name: str) -> Score:
    return Score(f"iou_{class_name}", f"IoU {class_name}")


def validation_scores(class_names: Sequence[str]) -> list[Score]:
    """Every score validation and ``unetseg evaluate`` report, in the order tables show them."""
    per_class = [score for name in class_names for score in (dice_of(name), iou_of(name))]
    return [LOSS, PIXEL_ERROR, DICE, IOU, *per_class, RAND_ERROR, V_INFO, *INSTANCE_SCORES]


def lower_is_better(key: str) -> bool:
    """The direction of a score by its key (per-class Dice and IoU: higher is better)."""
    scores = (LOSS, PIXEL_ERROR, DICE, IOU, *REGION_SCORES, *INSTANCE_SCORES)
    return any(score.key == key and score.lower_is_better for score in scores)
