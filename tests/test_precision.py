"""Choosing the fast path: precision, memory format, and the start-up description."""

import pytest
import torch

from unetseg.model import UNet
from unetseg.runtime.errors import UserError
from unetseg.runtime.precision import FastPath, choose_fast_path, cpu_bf16_feature, maybe_compile

CPU = torch.device("cpu")


def test_auto_on_cpu_follows_the_cpu_features() -> None:
    fast = choose_fast_path(CPU, "auto", channels_last=True)
    if cpu_bf16_feature():
        assert fast.dtype == torch.bfloat16 and cpu_bf16_feature() in fast.describe()
    else:
        assert fast.dtype is None
    assert fast.describe().startswith("cpu · ") and "channels_last" in fast.describe()
    assert f"{torch.get_num_threads()} threads" in fast.describe()


def test_explicit_precisions_are_honoured() -> None:
    assert choose_fast_path(CPU, "fp32", channels_last=False).dtype is None
    assert choose_fast_path(CPU, "bf16", channels_last=False).dtype == torch.bfloat16
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        choose_fast_path(CPU, "fp16", channels_last=False)
    assert not choose_fast_path(CPU, "bf16", True).needs_grad_scaler
    assert FastPath(CPU, torch.float16, "test", False).needs_grad_scaler


def test_channels_last_is_applied_to_model_and_input() -> None:
    fast = choose_fast_path(CPU, "fp32", channels_last=True)
    model = fast.prepare_model(UNet(in_channels=3, base_channels=4, depth=2))
    assert model.inc[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.prepare_input(torch.rand(1, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)


def test_bf16_forward_matches_fp32_closely() -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=8, depth=3).eval()
    x = torch.rand(1, 1, 48, 48)
    with torch.no_grad():
        reference = torch.sigmoid(model(x))
        fast = choose_fast_path(CPU, "bf16", channels_last=True)
        with fast.autocast():
            low = torch.sigmoid(fast.prepare_model(model)(fast.prepare_input(x)).float())
    assert (low - reference).abs().max() < 0.05


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def broken_compile(model: torch.nn.Module) -> torch.nn.Module:
        def fail(*args: object) -> None:
            raise RuntimeError("no C++ compiler found")

        return fail  # type: ignore[return-value]

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = UNet(base_channels=4, depth=2).train()
    fast = choose_fast_path(CPU, "fp32", channels_last=False)
    assert maybe_compile(model, True, torch.rand(1, 1, 16, 16), fast) is model
    assert model.training
    assert "torch.compile failed" in capsys.readouterr().out
