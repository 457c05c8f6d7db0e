"""The validation gallery of a report: each validation image predicted with the run's best checkpoint
(as ``unetseg evaluate`` predicts it), with its label, the prediction, an error map and its own scores,
worst image first."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

from unetseg.data.dataset import load_splits
from unetseg.inference.predictor import Predictor
from unetseg.model.checkpoint import load_checkpoint
from unetseg.reporting.run_dir import TrainingRun
from unetseg.runtime.device import resolve_device
from unetseg.runtime.precision import choose_fast_path
from unetseg.scoring.board import image_scores
from unetseg.scoring.names import DICE, LOSS, lower_is_better
from unetseg.tracking.pictures import classes_rgb, error_rgb, input_rgb, positive_class, rgb_png, thumbnail

PICTURE_SIDE = 320  # pixels: the longer side of each gallery picture (larger images are shrunk) ...
MIN_SHOWN_SIDE = 200  # ... and smaller ones are shown enlarged to this, pixels kept sharp


@dataclass
class GalleryEntry:
    name: str
    scores: dict[str, float]
    pictures: dict[str, str]  # input / label / prediction / errors → data: URI of a PNG
    width: int
    height: int


@dataclass
class Gallery:
    entries: list[GalleryEntry]
    images: int  # validation images in all (entries may show fewer)
    ranked_by: str  # the per-image score the entries are sorted by, worst first
    positive: str | None  # the class the error map is about (None: every class)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def ranking_key(monitor: str) -> str:
    """The per-image score to sort by: the monitored one, or mean Dice for the validation loss (which has
    no per-image value)."""
    return DICE.key if monitor == LOSS.key else monitor


def build_gallery(run: TrainingRun, limit: int, device: str = "auto") -> Gallery:
    """Predict the run's validation images with its best.pt; raise UserError if it cannot be done."""
    checkpoint = load_checkpoint(run.best_checkpoint)
    predictor = Predictor(checkpoint, choose_fast_path(resolve_device(device), "auto", True))
    _, validation = load_splits(
        run.data_config(), checkpoint.model.in_channels, checkpoint.model.num_classes, checkpoint.normalization
    )
    class_names = list(checkpoint.class_names)
    monitor = str(run.setting("trainer.monitor", DICE.key))
    key = ranking_key(monitor)
    positive = positive_class(class_names, monitor)
    entries = []
    for name, image, label in zip(validation.names, validation.images, validation.labels, strict=True):
        predicted = predictor.classes_of(predictor.probabilities_of(image))
        scores = image_scores(predicted, label, class_names)
        pictures = {
            "input": input_rgb(image),
            "label": classes_rgb(label, len(class_names)),
            "prediction": classes_rgb(predicted, len(class_names)),
            "errors": error_rgb(image, label, predicted, positive),
        }
        small = {what: thumbnail(rgb, PICTURE_SIDE) for what, rgb in pictures.items()}
        height, width = small["input"].shape[:2]
        zoom = max(1.0, MIN_SHOWN_SIDE / max(height, width))
        uris = {what: _data_uri(rgb_png(picture)) for what, picture in small.items()}
        entries.append(GalleryEntry(name, scores, uris, round(width * zoom), round(height * zoom)))

    def badness(entry: GalleryEntry) -> float:
        value = entry.scores.get(key, math.nan)
        if math.isnan(value):
            return -math.inf  # undefined scores last
        return value if lower_is_better(key) else -value

    entries.sort(key=badness, reverse=True)
    return Gallery(entries[:limit], len(entries), key, class_names[positive] if positive is not None else None)
