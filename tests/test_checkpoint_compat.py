"""Checkpoints written by unetseg before the re-layout still load, predict the probabilities that code
predicted, and resume to the epoch that code trained next.

No binary is committed: the test takes the pre-move source from git history (commit 91b3b74), runs that code
in a subprocess to write the checkpoints and its own outputs, then reads them with today's code.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from conftest import REPO, run_cli
from unetseg.data.synthetic import synthetic_pair
from unetseg.inference.predictor import Predictor, Tiling
from unetseg.model.checkpoint import load_checkpoint
from unetseg.runtime.precision import choose_fast_path

pytestmark = pytest.mark.slow  # runs the old and the new CLI

PRE_MOVE = "91b3b748cf579db4a89fb4398788e84804f02faf"  # the last commit before the re-layout
# A 2-wide, depth-2 U-Net trained on synthetic data for 12 epochs: tiny, yet its output follows the image.
TRAIN_SETTINGS = [
    "data.synthetic.num_images=8",
    "data.synthetic.size=48",
    "model.base_channels=2",
    "model.depth=2",
    "trainer.batch_size=2",
    "trainer.precision=fp32",
    "trainer.loss=bce_dice",
    "optim=adam",
    "optim.lr=1e-2",
]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same rounding in both codes' runs


@pytest.fixture(scope="module")
def pre_move(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with run/checkpoints/{best,last}.pt, resumed/metrics.jsonl and predicted/0_probability.tif,
    all written by the pre-move code."""
    if shutil.which("git") is None:
        pytest.skip("needs git to take the pre-move code from history")
    archive = subprocess.run(["git", "archive", "--format=tar", PRE_MOVE, "src", "conf"], cwd=REPO, capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {PRE_MOVE[:7]} is not in this clone's history (shallow clone?): {archive.stderr[:200]!r}")
    root = tmp_path_factory.mktemp("pre_move")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root / "code", filter="data")
    env = {**ONE_THREAD, "PYTHONPATH": str(root / "code" / "src")}  # shadows the installed (new) unetseg

    def old(*args: str) -> None:
        result = run_cli(*args, cwd=root, env=env)
        assert result.returncode == 0, result.stderr[-2000:]

    # The old code is what runs: only it has unetseg.engine.
    probe = subprocess.run([sys.executable, "-c", "import unetseg.engine.trainer"], env={**os.environ, **env})
    assert probe.returncode == 0
    old("train", *TRAIN_SETTINGS, "trainer.epochs=12", "hydra.run.dir=run")
    resume = "trainer.resume=run/checkpoints/last.pt"
    old("train", *TRAIN_SETTINGS, "trainer.epochs=13", resume, "hydra.run.dir=resumed")
    old("synthesize", "output=images", "count=1", "size=48", "seed=7")
    old(
        "predict",
        "input=images/image",
        "checkpoint=run/checkpoints/best.pt",
        "output=predicted",
        "save=[probability]",
        "probability_format=tiff",
        "precision=fp32",
        "tile_size=null",
    )
    return root


def test_pre_move_checkpoint_predicts_what_it_predicted_then(pre_move: Path) -> None:
    checkpoint = load_checkpoint(pre_move / "run" / "checkpoints" / "best.pt")
    assert checkpoint.model.base_channels == 2 and checkpoint.epoch == 12
    fp32 = choose_fast_path(torch.device("cpu"), "fp32", channels_last=True)
    predictor = Predictor(checkpoint, fp32, tiling=Tiling(tile=None))
    image, _ = synthetic_pair(7, 0, 48)  # what `unetseg synthesize count=1 size=48 seed=7` wrote as 0.png
    expected = tifffile.imread(pre_move / "predicted" / "0_probability.tif")
    assert np.ptp(expected) > 0.3  # the network has learned something: its output follows the image
    np.testing.assert_allclose(predictor.probabilities(image[None])[0], expected, atol=1e-5)


def test_pre_move_last_checkpoint_resumes_to_the_same_epoch(pre_move: Path, tmp_path: Path) -> None:
    source = tmp_path / "old-run" / "checkpoints"
    shutil.copytree(pre_move / "run" / "checkpoints", source)
    result = run_cli(
        "train",
        *TRAIN_SETTINGS,
        "trainer.epochs=13",
        f"trainer.resume={source / 'last.pt'}",
        "hydra.run.dir=resumed",
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()[-1])
    expected = json.loads((pre_move / "resumed" / "metrics.jsonl").read_text().splitlines()[-1])
    # Scores added since (the object scores) may be new; every score the old code wrote is reproduced.
    assert got["epoch"] == expected["epoch"] == 13 and expected.keys() <= got.keys()
    for key, value in expected.items():
        if key != "epoch_time_s":
            assert got[key] == pytest.approx(value, abs=2e-6), key
