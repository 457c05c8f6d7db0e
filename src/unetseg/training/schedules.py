"""Learning-rate schedules from the ``schedule`` config group.

poly, cosine and one-cycle step after every optimiser step (so their shape does not depend on the
epoch count); plateau steps once per epoch on the monitored validation score. Their length is a
:class:`Horizon`, which a time budget (unetseg.training.budget) moves as training goes: then all three are
functions of the step and the horizon (LambdaLR), so they reach their end wherever the horizon lands.
"""

from __future__ import annotations

import math
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


@dataclass
class Horizon:
    """The optimiser steps a schedule runs for (``movable``: a time budget may change ``total`` as it goes)."""

    total: int
    movable: bool = False


def _cosine(start: float, end: float, fraction: float) -> float:
    """From ``start`` to ``end`` along half a cosine (as torch's OneCycleLR anneals)."""
    return end + (start - end) / 2 * (math.cos(math.pi * min(1.0, max(0.0, fraction))) + 1)


def one_cycle_factor(step: int, total: int, pct_start: float) -> float:
    """torch's OneCycleLR (div_factor 25, final_div_factor 1e4, cosine) as a factor of the peak rate."""
    start, low = 1 / 25, 1 / 25 / 1e4
    rise = pct_start * total - 1
    if step <= rise:
        return _cosine(start, 1.0, step / rise if rise > 0 else 1.0)
    return _cosine(1.0, low, (step - rise) / max(1.0, total - 1 - rise))


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, horizon: Horizon, lower_is_better: bool
) -> Schedule:
    if cfg.name == ScheduleName.constant:
        return Schedule(None, per_step=False)
    if cfg.name == ScheduleName.poly:
        exponent = cfg.exponent
        return Schedule(LambdaLR(optimizer, lambda step: max(0.0, 1 - step / horizon.total) ** exponent), per_step=True)
    total_steps = horizon.total
    if horizon.movable and cfg.name == ScheduleName.cosine:
        base = optimizer.param_groups[0]["lr"]
        floor = cfg.min_lr / base if base > 0 else 0.0
        return Schedule(LambdaLR(optimizer, lambda step: _cosine(1.0, floor, step / horizon.total)), per_step=True)
    if horizon.movable and cfg.name == ScheduleName.onecycle:
        pct = cfg.pct_start
        return Schedule(LambdaLR(optimizer, lambda step: one_cycle_factor(step, horizon.total, pct)), per_step=True)
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
