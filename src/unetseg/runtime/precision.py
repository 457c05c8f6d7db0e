"""The fast path: which autocast dtype, memory format and compiler to use on the device at hand.

bf16 autocast is the fast path on CPUs with AVX512-BF16 or AMX (2-3× fp32 for convolutions) and on GPUs
that support bf16; older GPUs get fp16 with a gradient scaler; everything else stays fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from unetseg.runtime.console import console
from unetseg.runtime.errors import UserError


@lru_cache(maxsize=1)
def cpu_bf16_feature() -> str | None:
    """The CPU feature that makes bf16 fast here (amx_bf16 or avx512_bf16), or None."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no cheap way to tell, so stay with fp32
        return None
    for feature in ("amx_bf16", "avx512_bf16"):
        if feature in flags:
            return feature
    return None


@dataclass(frozen=True)
class FastPath:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None = fp32
    reason: str
    channels_last: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_grad_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_input(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def describe(self) -> str:
        """e.g. ``cpu · bf16 autocast (avx512_bf16) · channels_last · 2 threads``"""
        parts = [str(self.device), f"{self.name} autocast ({self.reason})" if self.dtype else f"fp32 ({self.reason})"]
        parts.append("channels_last" if self.channels_last else "contiguous")
        if self.device.type == "cpu":
            parts.append(f"{torch.get_num_threads()} threads")
        return " · ".join(parts)


def choose_fast_path(device: torch.device, precision: str, channels_last: bool) -> FastPath:
    """Resolve ``precision`` (auto, fp32, bf16, fp16) for ``device``; explicit choices are honoured."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    if precision == "fp32":
        return FastPath(device, None, "requested", channels_last)
    if precision == "bf16":
        return FastPath(device, torch.bfloat16, "requested", channels_last)
    if precision == "fp16":
        if device.type == "cpu":
            raise UserError("precision=fp16 needs a GPU; on a CPU use precision=bf16 or auto")
        return FastPath(device, torch.float16, "requested", channels_last)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return FastPath(device, torch.bfloat16, "GPU supports bf16", channels_last)
        return FastPath(device, torch.float16, "GPU without bf16: fp16 with gradient scaling", channels_last)
    if device.type == "cpu":
        feature = cpu_bf16_feature()
        if feature:
            return FastPath(device, torch.bfloat16, feature, channels_last)
        return FastPath(device, None, "CPU without AVX512-BF16/AMX", channels_last)
    return FastPath(device, None, f"{device.type}: fp32", channels_last)


def maybe_compile(model: torch.nn.Module, enabled: bool, example: torch.Tensor, fast: FastPath) -> torch.nn.Module:
    """torch.compile the model if asked; if compiling fails, say why in one line and stay eager."""
    if not enabled:
        return model
    compiled = torch.compile(model)
    was_training = model.training
    model.eval()  # a warm-up in train mode would update BatchNorm statistics
    try:
        with torch.no_grad(), fast.autocast():
            compiled(example)
    except Exception as error:  # the compiler's failure modes are many; eager always works
        console.print(
            f"[yellow]torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0][:120]}); "
            "continuing without it[/]"
        )
        return model.train(was_training)
    model.train(was_training)
    return compiled
