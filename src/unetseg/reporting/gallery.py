"""The validation gallery of a report: each validation image predicted with the run's best checkpoint
(as ``unetseg evaluate`` predicts it), with its label, the prediction, an error map and its own scores,
worst image first. Every image is scored; only the worst ``limit`` keep their pictures (memory stays
bounded on a large validation set)."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from unetseg.data.dataset import label_rule, load_splits
from unetseg.inference.predictor import Predictor
from unetseg.model.checkpoint import load_checkpoint
from unetseg.reporting.pages import data_uri
from unetseg.reporting.run_dir import TrainingRun
from unetseg.runtime.device import resolve_device
from unetseg.runtime.precision import choose_fast_path
from unetseg.scoring.board import image_scores
from unetseg.scoring.names import DICE, LOSS, lower_is_better
from unetseg.tracking.pictures import panels, positive_class, rgb_jpeg, rgb_png, thumbnail

DEFAULT_IMAGES = 50  # gallery images of a run whose config does not say (trainer.report_images)
PICTURE_SIDE = 320  # pixels: the longer side of each gallery picture (larger images are shrunk) ...
MIN_SHOWN_SIDE = 200  # ... and smaller ones are shown enlarged to this, pixels kept sharp


@dataclass
class GalleryEntry:
    name: str
    scores: dict[str, float]
    pictures: dict[str, str]  # input / label / prediction / errors → data: URI of a PNG or JPEG
    width: int  # shown size, pixels
    height: int


@dataclass
class Gallery:
    entries: list[GalleryEntry]
    images: int  # validation images in all (entries may show fewer)
    ranked_by: str  # the per-image score the entries are sorted by, worst first
    positive: str | None  # the class the error map is about (None: every class)


def ranking_key(monitor: str) -> str:
    """The per-image score to sort by: the monitored one, or mean Dice for the validation loss (which has
    no per-image value)."""
    return DICE.key if monitor == LOSS.key else monitor


def badness(scores: dict[str, float], key: str) -> float:
    """Larger is worse; an undefined score (NaN) counts as the best, so it is shown last."""
    value = scores.get(key, math.nan)
    if math.isnan(value):
        return -math.inf
    return value if lower_is_better(key) else -value


def build_gallery(run: TrainingRun, limit: int, device: str = "auto") -> Gallery:
    """Predict the run's validation images with its best.pt; raise UserError if it cannot be done."""
    checkpoint = load_checkpoint(run.best_checkpoint)
    predictor = Predictor(checkpoint, choose_fast_path(resolve_device(device), "auto", True))
    data = run.data_config()
    rule = label_rule(data, checkpoint.model.num_classes)
    _, validation = load_splits(data, checkpoint.model.in_channels, rule, checkpoint.normalization)
    class_names = list(checkpoint.class_names)
    monitor = str(run.setting("trainer.monitor", DICE.key))
    key = ranking_key(monitor)
    positive = positive_class(class_names, monitor)
    worst: list[tuple[float, int, GalleryEntry]] = []  # a min-heap of the ``limit`` worst so far
    for index, (name, image, label) in enumerate(
        zip(validation.names, validation.images, validation.labels, strict=True)
    ):
        predicted = predictor.classes_of(predictor.probabilities_of(image))
        scores = image_scores(predicted, label, class_names)
        rank = badness(scores, key)
        if len(worst) == limit and rank <= worst[0][0]:
            continue  # better than every image kept: no pictures needed
        pictures = {
            what: thumbnail(rgb, PICTURE_SIDE)
            for what, rgb in panels(image, label, predicted, len(class_names), positive).items()
        }
        height, width = pictures["input"].shape[:2]
        zoom = max(1.0, MIN_SHOWN_SIDE / max(height, width))
        # Class maps stay exact (PNG); the input and the error map, mostly microscope texture, go as JPEG.
        uris = {
            what: data_uri(rgb_png(picture)) if what in ("label", "prediction") else data_uri(rgb_jpeg(picture), "jpeg")
            for what, picture in pictures.items()
        }
        entry = GalleryEntry(name, scores, uris, round(width * zoom), round(height * zoom))
        item = (rank, -index, entry)  # ties: the earlier image counts as worse
        if len(worst) < limit:
            heapq.heappush(worst, item)
        else:
            heapq.heapreplace(worst, item)
    entries = [entry for _, _, entry in sorted(worst, key=lambda item: (item[0], item[1]), reverse=True)]
    return Gallery(entries, len(validation), key, class_names[positive] if positive is not None else None)
