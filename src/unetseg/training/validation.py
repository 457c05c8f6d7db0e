"""One validation pass: the loss and every score of `unetseg evaluate`, over whole images."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from unetseg.config import LossName
from unetseg.data.dataset import LabelledImages
from unetseg.model.head import classes_from_probabilities, to_probabilities
from unetseg.objects.instances import InstanceRule, objects_from, true_objects
from unetseg.runtime.distributed import all_reduce_sum, current_world
from unetseg.runtime.interrupts import stop_if_interrupted
from unetseg.runtime.precision import FastPath
from unetseg.scoring.board import ScoreBoard
from unetseg.scoring.names import LOSS
from unetseg.training.losses import compute_loss


@dataclass
class Preview:
    """One validation image with its label and the prediction (for TensorBoard's pictures)."""

    name: str
    image: np.ndarray  # (C, H, W) float, normalised
    label: np.ndarray  # (H, W) class ids
    predicted: np.ndarray  # (H, W) class ids


@dataclass
class Validation:
    scores: dict[str, float]
    previews: list[Preview] = field(default_factory=list)  # this rank's first ``previews`` images


def validate(
    network: torch.nn.Module,
    items: LabelledImages,
    loss_name: LossName,
    threshold: float,
    class_names: list[str],
    fast: FastPath,
    previews: int = 0,
    objects: InstanceRule | None = None,
) -> Validation:
    """Validation loss and every score of unetseg evaluate, over whole images (one at a time, so any
    size works). The weighted losses are reported unweighted: validation images carry no weight map.
    ``previews``: keep that many images with their predictions. ``objects``: also the object scores,
    with objects made by this rule."""
    network.eval()
    world = current_world()
    board = ScoreBoard(class_names, objects=objects is not None)
    total_loss = torch.zeros((), device=fast.device)
    kept: list[Preview] = []
    with torch.inference_mode():  # under torchrun each rank takes every world.size-th image
        for index in range(world.rank, len(items), world.size):
            name, image, label = items.names[index], items.images[index], items.labels[index]
            x = fast.prepare_input(torch.from_numpy(image)[None])
            y = torch.from_numpy(label.astype(np.int64))[None].to(fast.device)
            with fast.autocast():
                logits = network(x)
            total_loss += compute_loss(loss_name, logits, y)
            probabilities = to_probabilities(logits)
            predicted = classes_from_probabilities(probabilities, threshold)[0].to(torch.uint8).cpu().numpy()
            pair = None
            if objects is not None:
                found = objects_from(predicted, probabilities[0].cpu().numpy(), objects)
                pair = (found, true_objects(label, items.instances_of(index)))
            board.add(name, predicted, label, pair)
            if len(kept) < previews:
                kept.append(Preview(name, image, label, predicted))
            stop_if_interrupted()
    board.reduce_across_ranks(fast.device)  # every rank gets the same scores
    all_reduce_sum(total_loss)
    return Validation({LOSS.key: (total_loss / len(items)).item(), **board.summary()}, kept)
