"""A training run's folder is its own: training never starts in a folder that already holds a run, unless it
resumes that very run (a second run would replace its best.pt and mix both histories in metrics.jsonl), nor
among the training data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from unetseg.config import DataConfig, DataSource
from unetseg.data.pairing import FOLDER_PAIRS, default_root
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import user_path

RUN_FILES = ("checkpoints", "metrics.jsonl", "metrics.json")


def refuse_to_train_into(run_dir: Path, resume: str | None) -> None:
    """Stop with one line if ``run_dir`` holds a run that ``resume`` does not continue."""
    held = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not held:
        return
    if resume not in (None, "auto"):
        resumed = user_path(resume)  # last.pt in this folder, or the folder itself
        if run_dir.resolve() in (resumed, *resumed.parents):
            return
    raise UserError(
        f"{run_dir} already holds a training run ({held[0]}): choose another hydra.run.dir, or resume that run "
        f"with trainer.resume={run_dir / 'checkpoints' / 'last.pt'}"
    )


def refuse_run_among_data(run_dir: Path, data: DataConfig) -> None:
    """Stop with one line if ``run_dir`` is a data folder or inside its image or label folder: the run's files
    would become training data (and break the pairing next time)."""
    data_folders = {name for pair in FOLDER_PAIRS for name in pair} | {data.image_dir, data.label_dir}
    if data.source == DataSource.folder and data.root is None:  # data/train, the ISBI default, if it is there
        default = default_root(Path.cwd())
        data = dataclasses.replace(data, root=str(default)) if default is not None else data
    for key in ("root", "val_root"):
        given = getattr(data, key)
        if given is None:
            continue
        root = user_path(given)
        inside = run_dir.relative_to(root).parts if root in run_dir.parents else ()
        if run_dir == root or (inside and inside[0] in data_folders):
            raise UserError(
                f"hydra.run.dir={run_dir} is among the training data (data.{key}={given}): keep runs out of the "
                "data, choose another hydra.run.dir"
            )
