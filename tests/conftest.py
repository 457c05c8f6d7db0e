"""Shared test helpers: running the real CLI in a subprocess, and small datasets on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from unetseg.data.synthetic import synthetic_pair

REPO = Path(__file__).resolve().parents[1]
ISBI_TRAIN = Path(os.environ.get("UNETSEG_ISBI_ROOT", REPO.parent / "shared" / "data" / "isbi2012" / "train"))

# Tiny settings so an end-to-end training run takes seconds on a 2-core CPU.
TINY = ["model.base_channels=4", "model.depth=2", "trainer.epochs=1", "trainer.batch_size=2"]


def run_cli(
    *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m unetseg ARGS`` in ``cwd``, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "unetseg", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def write_dataset(root: Path, count: int, size: int = 48, seed: int = 0, label_suffix: str = ".png") -> Path:
    """``root/image/N.png`` and ``root/label/N<label_suffix>`` from the synthetic generator (labels 0/255)."""
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir(parents=True)
    for index in range(count):
        image, label = synthetic_pair(seed, index, size)
        cv2.imwrite(str(root / "image" / f"{index}.png"), image)
        cv2.imwrite(str(root / "label" / f"{index}{label_suffix}"), label * 255)
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", count=6)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Bad input: non-zero exit, exactly one line on stderr naming the problem, and no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
