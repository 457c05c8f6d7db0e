"""Validation metrics from a confusion matrix accumulated over all validation pixels.

Dice and IoU are per class (for a binary task: background/membrane and foreground/cell), computed from
the pixel counts of the whole validation set, not averaged per image. A class absent from both the
prediction and the truth scores 1.
"""

from __future__ import annotations

import torch

from unetseg.scoring.names import DICE, IOU, PIXEL_ERROR, dice_of, iou_of


class ConfusionMatrix:
    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """Add (N, H, W) predicted and true class ids; rows are truth, columns prediction."""
        k = self.num_classes
        flat = (target.reshape(-1).long() * k + predicted.reshape(-1).long()).cpu()
        self.counts += torch.bincount(flat, minlength=k * k).reshape(k, k)

    def scores(self, class_names: list[str]) -> dict[str, float]:
        counts = self.counts.double()
        tp = counts.diag()
        fp = counts.sum(0) - tp
        fn = counts.sum(1) - tp
        dice = torch.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.ones_like(tp))
        iou = torch.where(tp + fp + fn > 0, tp / (tp + fp + fn).clamp(min=1), torch.ones_like(tp))
        result: dict[str, float] = {
            DICE.key: dice.mean().item(),
            IOU.key: iou.mean().item(),
            PIXEL_ERROR.key: 1.0 - (tp.sum() / counts.sum().clamp(min=1)).item(),
        }
        for index, name in enumerate(class_names):
            result[dice_of(name).key] = dice[index].item()
            result[iou_of(name).key] = iou[index].item()
        return result
