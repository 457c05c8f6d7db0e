"""Evaluate's pipeline: predict labelled images exactly as predict does, and score them."""

from __future__ import annotations

from unetseg.data.dataset import LabelledImages
from unetseg.inference.predictor import Predictor
from unetseg.objects.instances import true_objects
from unetseg.runtime.console import progress_bars
from unetseg.scoring.board import ScoreBoard


def score_images(predictor: Predictor, items: LabelledImages) -> ScoreBoard:
    """Every image's scores and the set's (``items`` are normalised as the checkpoint was trained); the
    object scores too when the predictor makes objects (Predictor.use_instances)."""
    board = ScoreBoard(predictor.checkpoint.class_names, objects=predictor.instance_rule is not None)
    with progress_bars() as progress:
        task = progress.add_task("images", total=len(items), status="")
        for index, (name, image, label) in enumerate(zip(items.names, items.images, items.labels, strict=True)):
            probabilities = predictor.probabilities_of(image)
            classes = predictor.classes_of(probabilities)
            pair = None
            if predictor.instance_rule is not None:
                pair = (predictor.objects_of(classes, probabilities), true_objects(label, items.instances_of(index)))
            board.add(name, classes, label, pair)
            progress.update(task, advance=1, status=name)
    return board
