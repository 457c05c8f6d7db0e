"""Building the optimiser from its config node."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from unetseg.config import OptimConfig, OptimizerName


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == OptimizerName.rmsprop:
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == OptimizerName.sgd:
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov and cfg.momentum > 0,
        )
    optimizer = torch.optim.AdamW if cfg.name == OptimizerName.adamw else torch.optim.Adam
    return optimizer(params, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), weight_decay=cfg.weight_decay)
