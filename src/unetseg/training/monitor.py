"""Which epoch is best: the monitored validation score, optionally smoothed by an exponential moving
average (nnU-Net picks its best checkpoint by an EMA of the validation Dice), and early stopping."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from unetseg.scoring.names import lower_is_better


@dataclass
class Monitor:
    key: str
    ema: float  # weight of the previous smoothed value; 0 = no smoothing
    smoothed: float | None = None
    best: float | None = None
    best_epoch: int = 0
    epochs_since_best: int = 0

    def update(self, metrics: dict[str, float], epoch: int) -> bool:
        """Fold in one epoch's scores; True if the (smoothed) score is the best so far."""
        value = metrics[self.key]
        if math.isnan(value):  # e.g. a Rand error on a validation set without cells: cannot improve
            self.epochs_since_best += 1
            return False
        self.smoothed = value if self.smoothed is None else self.ema * self.smoothed + (1 - self.ema) * value
        better = self.best is None or (
            self.smoothed < self.best if lower_is_better(self.key) else self.smoothed > self.best
        )
        if better:
            self.best, self.best_epoch, self.epochs_since_best = self.smoothed, epoch, 0
        else:
            self.epochs_since_best += 1
        return better

    def should_stop(self, patience: int | None) -> bool:
        return patience is not None and self.epochs_since_best >= patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Monitor:
        return cls(**state)
