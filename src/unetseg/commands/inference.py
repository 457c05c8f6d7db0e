"""The glue that predict and evaluate share: from the inference config and a checkpoint to a Predictor."""

from __future__ import annotations

from pathlib import Path

import torch

from unetseg.config import InferenceConfig
from unetseg.console import console
from unetseg.distributed import broadcast_from_main, current_world
from unetseg.engine.checkpoint import load_checkpoint, newest_checkpoint
from unetseg.engine.device import resolve_device
from unetseg.engine.precision import choose_fast_path
from unetseg.engine.predictor import Predictor, Tiling
from unetseg.paths import user_path


def find_checkpoint(given: str | None, runs_root: str) -> Path:
    """``given``, or else the newest best.pt under ``runs_root`` (chosen by rank 0 under torchrun, so
    that a run finishing meanwhile cannot split the ranks)."""
    if given:
        return user_path(given)
    path = Path(str(broadcast_from_main(str(newest_checkpoint(user_path(runs_root))))))
    console.print(f"checkpoint not given: using the newest, {path}")
    return path


def build_predictor(cfg: InferenceConfig, path: Path) -> Predictor:
    world = current_world()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    fast = choose_fast_path(device, cfg.precision.value, cfg.channels_last)
    tiling = Tiling(cfg.tile_size, cfg.overlap, cfg.gaussian, cfg.batch_size, cfg.tta.value)
    return Predictor(load_checkpoint(path), fast, cfg.threshold, tiling)


def describe(predictor: Predictor) -> str:
    t = predictor.tiling
    tiles = f"{t.tile}-px tiles, overlap {t.overlap}" if t.tile else "whole images"
    return f"{predictor.fast.describe()} · {tiles} · TTA {t.tta} · threshold {predictor.threshold}"
