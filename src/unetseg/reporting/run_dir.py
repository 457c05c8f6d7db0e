"""What a training run directory holds, read back for a report: its config, history, summary and
checkpoint. Works for runs made by any version of unetseg that wrote ``metrics.jsonl`` and ``.hydra/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from unetseg.config import DataConfig, DataSource
from unetseg.data.pairing import ISBI_DEFAULT_ROOT
from unetseg.runtime.errors import UserError
from unetseg.tracking.history import read_history, read_summary


@dataclass
class TrainingRun:
    path: Path
    config: DictConfig  # as the run composed it (.hydra/config.yaml); empty if it is missing
    overrides: list[str]
    launch_dir: Path  # where the run was started from: its relative data paths resolve against it
    history: list[dict[str, Any]]
    summary: dict[str, Any]  # metrics.json; empty for a run that did not finish

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    def setting(self, key: str, default: Any = None) -> Any:
        """A dotted config value (``optim.lr``), or ``default`` where this run's config has no such key."""
        value = OmegaConf.select(self.config, key, default=default)
        return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value

    def data_config(self) -> DataConfig:
        """The run's data settings as the schema (relative folders made absolute against the launch dir)."""
        node = OmegaConf.select(self.config, "data")
        config_file = self.path / ".hydra" / "config.yaml"
        if node is None:
            what = "has no data settings" if config_file.is_file() else "is missing"
            raise UserError(f"{config_file} {what}: the gallery needs the data settings the run trained with")
        try:
            merged = OmegaConf.merge(OmegaConf.structured(DataConfig), _ADDED_LATER, node)
            data = OmegaConf.to_object(merged)
        except OmegaConfBaseException as error:
            raise UserError(f"the run's data settings do not fit this version of unetseg ({error})") from None
        assert isinstance(data, DataConfig)
        if data.source == DataSource.folder and data.root is None:  # trained on the default, data/train
            data.root = str(ISBI_DEFAULT_ROOT)
        for key in ("root", "val_root"):
            value = getattr(data, key)
            if value is not None and not Path(value).expanduser().is_absolute():
                setattr(data, key, str(self.launch_dir / value))
        return data


# Data settings added after the first runs were made, with the value those runs used.
_ADDED_LATER = {
    "target": "mask",
    "boundary_width": 2,
    "label_suffix": None,
    "synthetic": {"kind": "voronoi"},
    "max_pixels": 1073741824,
    "in_memory": "auto",
    "memory_share": 0.5,
    "cache_dir": None,
    "folds": None,
    "fold": 0,
}


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir()


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders (0, 1, ...) of a sweep, in job order."""
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def is_sweep_dir(path: Path) -> bool:
    return (path / "multirun.yaml").is_file() or any(is_run_dir(job) for job in job_dirs(path))


def load_run(path: Path) -> TrainingRun:
    """A run directory read back; a folder that is not one, or whose metrics.jsonl holds no epoch, is a
    UserError naming what is missing."""
    if not path.is_dir():
        raise UserError(f"{path} is not a folder: give a training run directory (outputs/train/<run>)")
    summary = read_summary(path)
    if not is_run_dir(path):
        if summary.get("status") == "failed":
            error = summary.get("error", "no error recorded")
            raise UserError(f"{path} is a job that failed before its first epoch: {error}")
        raise UserError(
            f"{path} is not a training run (no metrics.jsonl, no checkpoints/): give outputs/train/<run> "
            "or a sweep folder (outputs/sweep/<sweep>)"
        )
    config_file, hydra_file, overrides_file = (
        path / ".hydra" / n for n in ("config.yaml", "hydra.yaml", "overrides.yaml")
    )
    config = OmegaConf.load(config_file) if config_file.is_file() else OmegaConf.create({})
    assert isinstance(config, DictConfig)
    overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []  # type: ignore[union-attr]
    launch_dir = Path.cwd()
    if hydra_file.is_file():
        cwd = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd", default=None)
        if cwd and Path(cwd).is_dir():
            launch_dir = Path(cwd)
    return TrainingRun(path, config, overrides, launch_dir, read_history(path / "metrics.jsonl"), summary)
