"""`unetseg synthesize`: write synthetic images (EM-like cells or fluorescent nuclei), their exact masks and
their instance maps as image/, label/ and instances/ folders of PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unetseg.config import SynthesizeConfig
from unetseg.data.synthetic import synthetic_sample
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
    for sub in ("image", "label", "instances"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    objects = 0
    for index in range(cfg.count):
        image, instances = synthetic_sample(cfg.kind.value, cfg.seed, index, cfg.size)
        write_png_atomic(root / "image" / f"{index}.png", image)
        write_png_atomic(root / "label" / f"{index}.png", (instances > 0).astype(np.uint8) * 255)
        # 16-bit PNG even with few objects: unetseg (label_encoding=auto) reads 16-bit labels as instance maps.
        write_png_atomic(root / "instances" / f"{index}.png", instances.astype(np.uint16))
        objects += int(instances.max())
    console.print(
        f"wrote {cfg.count} synthetic {cfg.kind.value} image(s) with masks (label/) and instance maps (instances/, "
        f"{objects} objects) (seed {cfg.seed}) to {root}"
    )
    return {"output": str(root), "count": cfg.count, "objects": objects}


def main(argv: list[str]) -> None:
    run_command("synthesize", synthesize, argv)
