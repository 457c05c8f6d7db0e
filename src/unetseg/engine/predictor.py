"""Turning images into class-id masks with a checkpoint: the code predict (and later evaluate) share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unetseg.engine.checkpoint import Checkpoint, newest_checkpoint  # noqa: F401 - re-exported for predict
from unetseg.engine.metrics import classes_from_probabilities, to_probabilities
from unetseg.engine.precision import FastPath
from unetseg.engine.sliding_window import sliding_window, with_tta
from unetseg.errors import UserError
from unetseg.model import fold_batchnorm


@dataclass(frozen=True)
class Tiling:
    """How to cut large images: ``tile`` None runs each image whole."""

    tile: int | None = None
    overlap: float = 0.5
    gaussian: bool = True
    batch_size: int = 4
    tta: str = "none"


class Predictor:
    def __init__(
        self, checkpoint: Checkpoint, fast: FastPath, threshold: float | None = None, tiling: Tiling | None = None
    ) -> None:
        self.checkpoint = checkpoint
        self.fast = fast
        self.threshold = checkpoint.threshold if threshold is None else threshold
        self.tiling = tiling or Tiling()
        minimum = 2**checkpoint.model.depth
        if self.tiling.tile is not None and self.tiling.tile < minimum:
            raise UserError(
                f"tile_size={self.tiling.tile} is smaller than this network's minimum input ({minimum} px for "
                f"depth {checkpoint.model.depth}): use a larger tile_size"
            )
        model = checkpoint.model.build()
        model.load_state_dict(checkpoint.state_dict)
        self.model = fast.prepare_model(fold_batchnorm(model.eval()))

    @property
    def in_channels(self) -> int:
        return self.checkpoint.model.in_channels

    @property
    def num_classes(self) -> int:
        return max(2, self.checkpoint.model.num_classes)

    def _probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) normalised → (N, K, h, w): sigmoid of a single logit, softmax of several."""
        with self.fast.autocast():
            return to_probabilities(self.model(self.fast.prepare_input(batch)))

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """Raw (C, H, W) image of any dtype → float32 in [0, 1], exactly as in training."""
        return self.checkpoint.normalization(image)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Raw (C, H, W) image of any dtype → (K, H, W) float32 probabilities (K = 1 for a binary net)."""
        return self.probabilities_of(self.normalise(image))

    @torch.inference_mode()
    def probabilities_of(self, normalised: np.ndarray) -> np.ndarray:
        """Normalised (C, H, W) image → (K, H, W) float32 probabilities."""
        x = torch.from_numpy(normalised)
        forward = with_tta(self._probabilities, self.tiling.tta)
        t = self.tiling
        if t.tile is None:
            return forward(x[None])[0].cpu().numpy()
        return sliding_window(
            x, forward, t.tile, t.overlap, t.gaussian, t.batch_size, self.checkpoint.model.num_classes
        )

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Raw (C, H, W) image → (H, W) uint8 class ids: probability ≥ threshold, or argmax."""
        return self.classes_of(self.probabilities(image))

    def classes_of(self, probabilities: np.ndarray) -> np.ndarray:
        """(K, H, W) probabilities → (H, W) uint8 class ids."""
        classes = classes_from_probabilities(torch.from_numpy(probabilities)[None], self.threshold)
        return classes[0].to(torch.uint8).numpy()

    def to_png_values(self, classes: np.ndarray) -> np.ndarray:
        """Class ids → visible grey levels: 0/255 for a binary mask, evenly spread for several classes."""
        return (classes * (255 // (self.num_classes - 1))).astype(np.uint8)
