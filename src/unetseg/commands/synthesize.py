"""`unetseg synthesize`: write synthetic EM-like images and exact masks as image/ and label/ folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unetseg.config import SynthesizeConfig
from unetseg.data.synthetic import synthetic_pair
from unetseg.io.png import write_png_atomic
from unetseg.runner import run_command
from unetseg.runtime.console import console
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import user_path


def synthesize(cfg: SynthesizeConfig, run_dir: Path) -> dict[str, Any]:
    assert cfg.output is not None  # checks.check_synthesize
    root = user_path(cfg.output)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"output {root} exists and is not empty: choose a new folder")
    for sub in ("image", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for index in range(cfg.count):
        image, label = synthetic_pair(cfg.seed, index, cfg.size)
        write_png_atomic(root / "image" / f"{index}.png", image)
        write_png_atomic(root / "label" / f"{index}.png", label * 255)
    console.print(f"wrote {cfg.count} synthetic image(s) and label(s) (seed {cfg.seed}) to {root}")
    return {"output": str(root), "count": cfg.count}


def main(argv: list[str]) -> None:
    run_command("synthesize", synthesize, argv)
