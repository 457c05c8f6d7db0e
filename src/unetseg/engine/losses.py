"""Training losses on logits: BCE (cross-entropy for several classes), soft Dice, or their sum."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unetseg.config import LossName


def _probabilities_and_targets(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class probabilities and one-hot targets, both (N, K, H, W); K = 2 for a binary logit."""
    if logits.shape[1] == 1:
        foreground = torch.sigmoid(logits)
        probs = torch.cat([1 - foreground, foreground], dim=1)
        classes = 2
    else:
        probs = torch.softmax(logits, dim=1)
        classes = logits.shape[1]
    one_hot = F.one_hot(target, classes).permute(0, 3, 1, 2).to(probs.dtype)
    return probs, one_hot


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − mean over classes of the batch soft Dice (every class counts, membrane included)."""
    probs, one_hot = _probabilities_and_targets(logits, target)
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    total = probs.sum(dims) + one_hot.sum(dims)
    return 1 - ((2 * intersection + eps) / (total + eps)).mean()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype))
    return F.cross_entropy(logits, target)


def compute_loss(name: LossName, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if name == LossName.bce:
        return cross_entropy(logits, target)
    if name == LossName.dice:
        return soft_dice_loss(logits, target)
    return cross_entropy(logits, target) + soft_dice_loss(logits, target)
