"""The network's output head: logits → probabilities → class ids. The one decision rule that validation,
predict, evaluate and export share, so a threshold is never applied to raw logits anywhere."""

from __future__ import annotations

import torch


def to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) logits → probabilities: sigmoid of a single logit, softmax of several."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def classes_from_probabilities(probabilities: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, K, H, W) probabilities → (N, H, W) class ids: probability ≥ threshold for one output, else argmax.

    The one decision rule that validation, predict and evaluate share (never a threshold on raw logits).
    """
    if probabilities.shape[1] == 1:
        return (probabilities[:, 0] >= threshold).long()
    return probabilities.argmax(dim=1)


def predict_classes(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, K, H, W) logits → (N, H, W) class ids."""
    return classes_from_probabilities(to_probabilities(logits), threshold)
