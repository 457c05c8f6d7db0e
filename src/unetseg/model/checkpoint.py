"""Checkpoints: plain dicts of tensors and primitives, written atomically, loadable with weights_only=True.

Everything predict needs travels in the file: the model spec, the input normalisation, the class names
and the threshold. No pickled Python objects, so loading never runs code from the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unetseg.config import ModelSpec
from unetseg.data.normalize import PercentileNormalizer
from unetseg.io.atomic import atomic_open
from unetseg.model.unet import UNet, build_network
from unetseg.runtime.console import console
from unetseg.runtime.distributed import broadcast_from_main
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import user_path

FORMAT = "unetseg-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    model: ModelSpec
    normalization: PercentileNormalizer
    class_names: list[str]
    threshold: float
    epoch: int
    metrics: dict[str, float]
    # what the network was trained to output (unetseg.data.targets): mask, or boundary (three classes)
    target: str = "mask"
    boundary_width: int = 2
    # last.pt only: optimiser, scheduler, scaler, monitor and RNG state, for trainer.resume
    training_state: dict[str, Any] | None = None

    def build_network(self) -> UNet:
        """The trained network, in eval mode (as trained: BatchNorm not folded)."""
        network = build_network(self.model)
        network.load_state_dict(self.state_dict)
        return network.eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "state_dict": self.state_dict,
            "model": self.model.to_dict(),
            "normalization": self.normalization.to_dict(),
            "class_names": list(self.class_names),
            "threshold": float(self.threshold),
            "epoch": int(self.epoch),
            "metrics": {key: float(value) for key, value in self.metrics.items()},
            "target": self.target,
            "boundary_width": int(self.boundary_width),
            "training_state": self.training_state,
        }


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    with atomic_open(path) as handle:
        torch.save(checkpoint.to_dict(), handle)


def load_checkpoint(path: Path) -> Checkpoint:
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: give checkpoint=path/to/best.pt")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for foreign files; all mean the same to the user
        raw = None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise UserError(f"{path} is not a unetseg checkpoint: use a best.pt or last.pt from a unetseg train run")
    if raw.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format {raw.get('format_version')}, this unetseg reads {FORMAT_VERSION}"
        )
    try:
        model = ModelSpec(**raw["model"])
    except (TypeError, ValueError) as error:
        raise UserError(f"{path} describes a network this unetseg cannot build ({error}): retrain it") from None
    return Checkpoint(
        state_dict=raw["state_dict"],
        model=model,
        normalization=PercentileNormalizer.from_dict(raw["normalization"]),
        class_names=list(raw["class_names"]),
        threshold=float(raw["threshold"]),
        epoch=int(raw["epoch"]),
        metrics=dict(raw["metrics"]),
        target=_target_of(raw, path),
        boundary_width=int(raw.get("boundary_width", 2)),
        training_state=raw.get("training_state"),
    )


def _target_of(raw: dict[str, Any], path: Path) -> str:
    """The training target (checkpoints from before instance targets have none: mask)."""
    target = raw.get("target", "mask")
    if target not in ("mask", "boundary"):
        raise UserError(f"{path} has an unknown training target {target!r}: retrain it with this unetseg")
    if target == "boundary" and len(raw["class_names"]) != 3:
        raise UserError(f"{path} claims a boundary target but has {len(raw['class_names'])} classes: retrain it")
    return str(target)


def find_checkpoint(
    given: str | None,
    runs_root: str,
    name: str = "best.pt",
    exclude: Path | None = None,
    why: str = "checkpoint not given",
) -> Path:
    """The one checkpoint finder of train's resume, predict, evaluate and export: ``given``, or else the
    newest ``checkpoints/<name>`` under ``runs_root`` (said on the console, after ``why``). Under torchrun
    rank 0 chooses and every rank takes its choice, so that a run finishing meanwhile cannot split them."""
    if given:
        return user_path(given)
    path = Path(str(broadcast_from_main(str(newest_checkpoint(user_path(runs_root), name, exclude)))))
    console.print(f"{why}: using the newest {name} under {runs_root}, {path}")
    return path


def newest_checkpoint(runs_root: Path, name: str = "best.pt", exclude: Path | None = None) -> Path:
    """The most recently written ``checkpoints/<name>`` of any training run (or sweep job) under
    ``runs_root``, leaving out the run directory ``exclude`` (the one being written now)."""
    candidates = list(runs_root.glob(f"**/checkpoints/{name}")) if runs_root.is_dir() else []
    if exclude is not None:
        candidates = [path for path in candidates if exclude.resolve() not in path.resolve().parents]
    if not candidates:
        raise UserError(
            f"no training run with checkpoints/{name} under {runs_root}: train one first (unetseg train) "
            f"or give the path to a {name} explicitly"
        )
    return max(candidates, key=lambda path: path.stat().st_mtime_ns)
