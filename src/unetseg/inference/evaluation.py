"""Evaluate's pipeline: predict labelled images exactly as predict does, and score them."""

from __future__ import annotations

from unetseg.data.dataset import LabelledImages
from unetseg.inference.predictor import Predictor
from unetseg.runtime.console import progress_bars
from unetseg.scoring.board import ScoreBoard


def score_images(predictor: Predictor, items: LabelledImages) -> ScoreBoard:
    """Every image's scores and the set's (``items`` are normalised as the checkpoint was trained)."""
    board = ScoreBoard(predictor.checkpoint.class_names)
    with progress_bars() as progress:
        task = progress.add_task("images", total=len(items), status="")
        for name, image, label in zip(items.names, items.images, items.labels, strict=True):
            classes = predictor.classes_of(predictor.probabilities_of(image))
            board.add(name, classes, label)
            progress.update(task, advance=1, status=name)
    return board
