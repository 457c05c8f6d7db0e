"""Choosing the torch device: the one place that turns ``device=...`` into a torch.device."""

from __future__ import annotations

import torch

from unetseg.runtime.distributed import current_world
from unetseg.runtime.errors import UserError

DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")  # device= may also name cuda:N


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda, then mps, then cpu; an explicit device must be available. Under torchrun a CUDA
    device is this process's own GPU (``LOCAL_RANK``), whatever index the config names."""
    device = _available_device(name)
    world = current_world()
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def _available_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available here: use device=auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name} requested but MPS is not available here: use device=auto or cpu")
    return device
