"""`unetseg synthesize`: write synthetic EM-like images and exact masks as image/ and label/ folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from unetseg.config import SynthesizeConfig, check_synthesize, to_typed
from unetseg.console import console
from unetseg.data.io import write_png_atomic
from unetseg.data.synthetic import synthetic_pair
from unetseg.errors import UserError
from unetseg.paths import user_path
from unetseg.runner import run_command


def synthesize(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    typed: SynthesizeConfig = to_typed(cfg)
    check_synthesize(typed)
    assert typed.output is not None
    root = user_path(typed.output)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"output {root} exists and is not empty: choose a new folder")
    for sub in ("image", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for index in range(typed.count):
        image, label = synthetic_pair(typed.seed, index, typed.size)
        write_png_atomic(root / "image" / f"{index}.png", image)
        write_png_atomic(root / "label" / f"{index}.png", label * 255)
    console.print(f"wrote {typed.count} synthetic image(s) and label(s) (seed {typed.seed}) to {root}")
    return {"output": str(root), "count": typed.count}


def main(argv: list[str]) -> None:
    run_command("synthesize", synthesize, argv)
