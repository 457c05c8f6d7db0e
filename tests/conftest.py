"""Shared test helpers: running the real CLI in a subprocess, and small datasets on disk."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from forked_cli import ForkedCli
from unetseg.config import LossName, ModelSpec
from unetseg.data.normalize import PercentileNormalizer
from unetseg.data.synthetic import synthetic_pair
from unetseg.model import build_network
from unetseg.model.checkpoint import Checkpoint
from unetseg.runtime import paths
from unetseg.runtime.precision import choose_fast_path
from unetseg.training.losses import compute_loss

REPO = Path(__file__).resolve().parents[1]
ISBI_TRAIN = Path(os.environ.get("UNETSEG_ISBI_ROOT", REPO.parent / "shared" / "data" / "isbi2012" / "train"))

# Tiny settings so an end-to-end training run takes seconds on a 2-core CPU.
TINY = ["model.base_channels=4", "model.depth=2", "trainer.epochs=1", "trainer.batch_size=2"]
FP32 = choose_fast_path(torch.device("cpu"), "fp32", channels_last=False)


def trained_checkpoint(num_classes: int = 1) -> Checkpoint:
    """A small network trained for a few seconds on synthetic data, so its output follows the image;
    trained once per test session and class count (one cache key for ``()`` and ``(1,)``)."""
    return _trained_checkpoint(num_classes)


@lru_cache(maxsize=2)
def _trained_checkpoint(num_classes: int) -> Checkpoint:
    torch.manual_seed(0)
    spec = ModelSpec("bilinear", 1, num_classes, 8, 3)
    model = build_network(spec).train()
    normalizer = PercentileNormalizer(0.5, 99.5)
    pairs = [synthetic_pair(3, index, 64) for index in range(8)]
    images = torch.from_numpy(np.stack([normalizer(image[None]) for image, _ in pairs]))
    labels = torch.from_numpy(np.stack([label for _, label in pairs]).astype(np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fast for a net this small, and ~10× faster than 2 threads on a busy CPU
    try:
        for _ in range(40):
            target = labels.clamp(max=num_classes - 1 if num_classes > 1 else 1)
            loss = compute_loss(LossName.bce, model(images), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    names = ["a", "b", "c"][: max(2, num_classes)]
    return Checkpoint(model.state_dict(), spec, normalizer, names, 0.5, 1, {})


_forked: ForkedCli | None = None


def run_cli(
    *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """The CLI with ARGS in ``cwd``, in a process of its own, output captured as text: forked from a server that
    imported unetseg once (tests/forked_cli.py, 2 s less per call), or ``python -m unetseg`` itself when the test
    sets ``env`` (PYTHONPATH and thread counts act only when an interpreter starts)."""
    global _forked
    if env is None:
        if _forked is None:
            _forked = ForkedCli(Path(tempfile.mkdtemp(prefix="unetseg-forked-cli-")))
            atexit.register(_forked.close)
        return _forked.run(*args, cwd=cwd, env={"COLUMNS": "200"}, timeout=timeout)
    return subprocess.run(
        [sys.executable, "-m", "unetseg", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **env},
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


@pytest.fixture(autouse=True, scope="session")
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """unetseg's cache (OpenVINO conversions) in a folder of this test session, shared by the in-process
    tests and the CLI runs they start (which inherit the environment), never the user's ~/.cache."""
    os.environ["UNETSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("unetseg-cache"))


@pytest.fixture(autouse=True)
def _fresh_run_stamp() -> Iterator[None]:
    """An in-process test that makes a run stamp (unetseg.runtime.paths.run_stamp) exports it, as a launcher's
    parent process must; the CLI runs of later tests would then all share one run folder. Forget it."""
    yield
    os.environ.pop(paths.STAMP_VARIABLE, None)
    paths._STAMP = None
