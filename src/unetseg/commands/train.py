"""`unetseg train`: compose the config, train, and leave checkpoints and metrics in the run directory."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from unetseg.config import TrainConfig
from unetseg.io.atomic import write_text_atomic
from unetseg.runner import run_command
from unetseg.runtime.console import config_tree, console
from unetseg.runtime.distributed import current_world, gather_objects
from unetseg.training.trainer import Trainer


def train(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    started = time.time()
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    console.print(config_tree(tree, title="unetseg train"))  # type: ignore[arg-type]
    console.print(f"run directory: {run_dir}")
    result = Trainer(cfg, run_dir).fit()
    world = current_world()
    if world.distributed:
        ranks_best = gather_objects(result.best)  # the all-reduced metrics must agree on every rank
        if world.is_main and any(best != ranks_best[0] for best in ranks_best):
            raise RuntimeError(f"validation metrics differ between ranks: {ranks_best}")
        if not world.is_main:
            return {}
    summary = {
        "status": "completed",
        "best_epoch": result.best_epoch,
        "best": result.best,
        "last": result.last,
        "epochs": result.epochs,
        "stopped_early": result.stopped_early,
        "monitor": cfg.trainer.monitor,
        "parameters": result.parameters,
        "wall_time_s": result.wall_time_s,
        "checkpoint_best": str(result.best_checkpoint),
        "checkpoint_last": str(result.last_checkpoint),
    }
    summary["process"] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_unix": started,
        "finished_unix": time.time(),
    }
    if world.distributed:
        summary["world_size"] = world.size
        summary["best_per_rank"] = ranks_best
    write_text_atomic(run_dir / "metrics.json", json.dumps(summary, indent=2))
    console.print(
        f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, "
        f"{cfg.trainer.monitor} {result.best[cfg.trainer.monitor]:.4f})"
    )
    console.print(f"last checkpoint: {result.last_checkpoint}")
    console.print(f"metrics: {run_dir / 'metrics.jsonl'} (per epoch), {run_dir / 'metrics.json'} (summary)")
    return summary


def main(argv: list[str]) -> None:
    run_command("train", train, argv)
