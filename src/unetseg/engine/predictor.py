"""Turning images into class-id masks with a checkpoint: the code predict (and later evaluate) share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unetseg.engine.checkpoint import Checkpoint
from unetseg.engine.metrics import predict_classes
from unetseg.engine.precision import FastPath
from unetseg.errors import UserError
from unetseg.model import fold_batchnorm


class Predictor:
    def __init__(self, checkpoint: Checkpoint, fast: FastPath, threshold: float | None = None) -> None:
        self.checkpoint = checkpoint
        self.fast = fast
        self.threshold = checkpoint.threshold if threshold is None else threshold
        model = checkpoint.model.build()
        model.load_state_dict(checkpoint.state_dict)
        self.model = fast.prepare_model(fold_batchnorm(model.eval()))

    @property
    def in_channels(self) -> int:
        return self.checkpoint.model.in_channels

    @property
    def num_classes(self) -> int:
        return max(2, self.checkpoint.model.num_classes)

    @torch.inference_mode()
    def predict(self, image: np.ndarray) -> np.ndarray:
        """Raw (C, H, W) image of any dtype → (H, W) uint8 class ids (sigmoid ≥ threshold, or argmax)."""
        x = self.fast.prepare_input(torch.from_numpy(self.checkpoint.normalization(image))[None])
        with self.fast.autocast():
            logits = self.model(x)
        return predict_classes(logits, self.threshold)[0].to(torch.uint8).cpu().numpy()

    def to_png_values(self, classes: np.ndarray) -> np.ndarray:
        """Class ids → visible grey levels: 0/255 for a binary mask, evenly spread for several classes."""
        return (classes * (255 // (self.num_classes - 1))).astype(np.uint8)


def newest_checkpoint(runs_root: Path) -> Path:
    """The most recently written best.pt of any training run (or sweep job) under ``runs_root``."""
    candidates = list(runs_root.glob("**/checkpoints/best.pt")) if runs_root.is_dir() else []
    if not candidates:
        raise UserError(
            f"no checkpoint given and no training run with checkpoints/best.pt under {runs_root}: "
            "train one first (unetseg train) or pass checkpoint=path/to/best.pt"
        )
    return max(candidates, key=lambda path: path.stat().st_mtime_ns)
