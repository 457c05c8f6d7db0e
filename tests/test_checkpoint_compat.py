"""Checkpoints written by unetseg before the re-layout (tests/fixtures/pre_move, made by make.sh there with
commit 91b3b74) still load, predict the probabilities that code predicted, and resume to the epoch that code
trained next."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from conftest import run_cli
from unetseg.data.synthetic import synthetic_pair
from unetseg.inference.predictor import Predictor, Tiling
from unetseg.model.checkpoint import load_checkpoint
from unetseg.runtime.precision import choose_fast_path

FIXTURE = Path(__file__).parent / "fixtures" / "pre_move"
# The settings make.sh trained with; resuming needs the same network and data.
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


def test_pre_move_checkpoint_predicts_what_it_predicted_then() -> None:
    checkpoint = load_checkpoint(FIXTURE / "best.pt")
    assert checkpoint.model.base_channels == 2 and checkpoint.epoch == 12
    fp32 = choose_fast_path(torch.device("cpu"), "fp32", channels_last=True)
    predictor = Predictor(checkpoint, fp32, tiling=Tiling(tile=None))
    image, _ = synthetic_pair(7, 0, 48)  # what `unetseg synthesize count=1 size=48 seed=7` wrote as 0.png
    expected = tifffile.imread(FIXTURE / "expected_probability.tif")
    assert np.ptp(expected) > 0.5  # the fixture's network has learned something: its output follows the image
    np.testing.assert_allclose(predictor.probabilities(image[None])[0], expected, atol=1e-5)


@pytest.mark.slow
def test_pre_move_last_checkpoint_resumes_to_the_same_epoch(tmp_path: Path) -> None:
    source = tmp_path / "old-run" / "checkpoints"
    source.mkdir(parents=True)
    shutil.copy(FIXTURE / "last.pt", source / "last.pt")
    shutil.copy(FIXTURE / "best.pt", source / "best.pt")
    result = run_cli(
        "train",
        *TRAIN_SETTINGS,
        "trainer.epochs=13",
        f"trainer.resume={source / 'last.pt'}",
        "hydra.run.dir=resumed",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    records = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    got = json.loads(records[-1])
    expected = json.loads((FIXTURE / "expected_resumed_epoch.jsonl").read_text())
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key != "epoch_time_s":
            assert got[key] == pytest.approx(value, abs=2e-6), key
