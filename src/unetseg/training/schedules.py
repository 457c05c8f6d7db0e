"""Learning-rate schedules from the ``schedule`` config group.

poly, cosine and one-cycle step after every optimiser step (so their shape does not depend on the
epoch count); plateau steps once per epoch on the monitored validation score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from unetseg.config import ScheduleConfig, ScheduleName


@dataclass
class Schedule:
    """A torch scheduler and when to step it: after each batch, or after each validation."""

    scheduler: LRScheduler | ReduceLROnPlateau | None
    per_step: bool

    def after_step(self) -> None:
        if self.per_step and self.scheduler is not None:
            self.scheduler.step()

    def after_validation(self, monitored: float) -> None:
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(monitored)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int, lower_is_better: bool
) -> Schedule:
    if cfg.name == ScheduleName.constant:
        return Schedule(None, per_step=False)
    if cfg.name == ScheduleName.poly:
        exponent = cfg.exponent
        return Schedule(LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total_steps) ** exponent), per_step=True)
    if cfg.name == ScheduleName.cosine:
        return Schedule(CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=cfg.min_lr), per_step=True)
    if cfg.name == ScheduleName.onecycle:
        max_lr = [group["lr"] for group in optimizer.param_groups]
        # cycle_momentum would overwrite RMSprop/SGD momentum and Adam's beta1 with its own range.
        scheduler = OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=cfg.pct_start, cycle_momentum=False
        )
        return Schedule(scheduler, per_step=True)
    mode = "min" if lower_is_better else "max"
    return Schedule(ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.factor, patience=cfg.patience), per_step=False)
