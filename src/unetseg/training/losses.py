"""Training losses on logits: BCE (cross-entropy for several classes), soft Dice, their sum, and BCE
weighted per pixel by the U-Net paper's border weight map (see unetseg.training.border_weights)."""

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


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pixels of the (optionally per-pixel weighted) binary or multi-class cross-entropy."""
    if logits.shape[1] == 1:
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype), reduction="none")
    else:
        per_pixel = F.cross_entropy(logits, target, reduction="none")
    return (per_pixel * weight).mean() if weight is not None else per_pixel.mean()


WEIGHTED = (LossName.weighted_bce, LossName.weighted_bce_dice)


def compute_loss(
    name: LossName, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """``weight`` (N, H, W) is used by the weighted losses only (validation passes none: plain BCE)."""
    logits = logits.float()
    if name == LossName.dice:
        return soft_dice_loss(logits, target)
    ce = cross_entropy(logits, target, weight if name in WEIGHTED else None)
    if name in (LossName.bce, LossName.weighted_bce):
        return ce
    return ce + soft_dice_loss(logits, target)
