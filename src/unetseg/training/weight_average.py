"""``trainer.weight_ema``: an exponential moving average of the network's weights and BatchNorm statistics,
updated after every optimiser step (Polyak averaging, as timm's ModelEma and YOLO's ModelEMA keep one).

Validation, best.pt and last.pt hold the average: late in training the weights still jump from step to step
(the validation score swings by a few thousandths between epochs), and their average sits nearer the middle of
where they jump. The decay ramps up over the first steps ((1 + n) / (10 + n), as TensorFlow's
ExponentialMovingAverage does with num_updates), so the random initial weights leave no trace in a short run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.optim.swa_utils import AveragedModel


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        """A copy of ``model`` (on its device, in its memory format) that follows it with this ``decay`` per step."""
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)

    def _average(
        self, averaged: Sequence[torch.Tensor], current: Sequence[torch.Tensor], updates: torch.Tensor | int
    ) -> None:
        n = int(updates)
        weight = 1.0 - min(self.decay, (1.0 + n) / (10.0 + n))
        for mean, value in zip(averaged, current, strict=True):
            if mean.is_floating_point():
                mean.lerp_(value, weight)
            else:  # BatchNorm's step counter
                mean.copy_(value)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged network: what validation scores and the checkpoints hold."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    def update(self, model: torch.nn.Module) -> None:
        """After an optimiser step: move the average towards ``model`` (the unwrapped network)."""
        self.averaged.update_parameters(model)

    def continue_from(self, updates: int) -> None:
        """A resumed run: the average (loaded from the checkpoint's weights) has had ``updates`` steps."""
        self.averaged.n_averaged.fill_(updates)
