"""Choosing the torch device: the one place that turns ``device=...`` into a torch.device."""

from __future__ import annotations

import re

import torch

from unetseg.runtime.distributed import current_world, launched_by_torchrun
from unetseg.runtime.errors import UserError

DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")  # device= may also name cuda:N
DEVICE_FORMS = "auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps"
_DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def device_name_problem(name: str) -> str | None:
    """Why ``name`` is not a device unetseg takes (None: it is one); whether it is here is another question."""
    if _DEVICE_NAME.fullmatch(name):
        return None
    return f"not a device name; use {DEVICE_FORMS}"


def device_unavailable(name: str) -> str | None:
    """Why the well-formed device ``name`` is not on this machine (None: it is, or ``auto``). Under torchrun
    a CUDA index is not checked: each rank uses its own GPU (``LOCAL_RANK``) whatever index is named."""
    if name == "auto":
        return None
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available here (no NVIDIA GPU, or a CPU-only torch build); use auto or cpu"
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count and not launched_by_torchrun():
        return f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; use one of them, cuda or auto"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "MPS (Apple silicon) is not available here; use auto or cpu"
    return None


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
    problem = device_name_problem(name) or device_unavailable(name)
    if problem is not None:
        raise UserError(f"device={name}: {problem}")
    return torch.device(name)
