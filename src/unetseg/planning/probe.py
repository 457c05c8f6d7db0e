"""A few timed training steps on this machine, per candidate network: what one step costs, measured (seconds,
not minutes), with the precision and memory layout training will use."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from unetseg.config import LossName, ModelSpec, Upsampling
from unetseg.model import build_network
from unetseg.runtime.precision import FastPath
from unetseg.training.losses import compute_loss


@dataclass(frozen=True)
class StepTime:
    width: int
    seconds: float  # one optimiser step (forward, backward, Adam) of the batch


def time_steps(
    fast: FastPath, width: int, depth: int, channels: int, classes: int, patch: int, batch: int, repeats: int = 2
) -> StepTime:
    """The fastest of ``repeats`` timed steps after one warm-up step (which builds the kernels), on random data."""
    generator = torch.Generator().manual_seed(0)
    spec = ModelSpec(Upsampling.bilinear, channels, classes, width, depth)
    model = fast.prepare_model(build_network(spec)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = fast.prepare_input(torch.rand((batch, channels, patch, patch), generator=generator))
    labels = torch.randint(0, max(2, classes), (batch, patch, patch), generator=generator).to(fast.device)
    best = float("inf")
    for attempt in range(repeats + 1):
        if fast.device.type == "cuda":
            torch.cuda.synchronize(fast.device)
        started = time.perf_counter()
        with fast.autocast():
            loss = compute_loss(LossName.bce_dice, model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if fast.device.type == "cuda":
            torch.cuda.synchronize(fast.device)
        if attempt > 0:
            best = min(best, time.perf_counter() - started)
    return StepTime(width, best)
