"""A training run's folder is its own: training never starts in a folder that already holds a run, unless it
resumes that very run (a second run would replace its best.pt and mix both histories in metrics.jsonl)."""

from __future__ import annotations

from pathlib import Path

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
