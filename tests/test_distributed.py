"""torchrun: two CPU processes (gloo) through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_dataset
from unetseg.config import ModelSpec
from unetseg.model import build_network

pytestmark = pytest.mark.slow  # end-to-end: the real CLI in a subprocess (make test-fast skips them)

TINY = ["model.base_channels=4", "model.depth=2", "trainer.precision=fp32"]


def torchrun(*args: str, cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            "--standalone",
            "-m",
            "unetseg",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def single(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unetseg", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_two_ranks_share_one_run_and_agree_on_metrics(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", count=7, size=40)
    result = torchrun(
        "train",
        "data=folder",
        f"data.root={data}",
        *TINY,
        "trainer.epochs=2",
        "trainer.batch_size=2",
        "trainer.loggers=[tensorboard]",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 1  # one run directory, not one per rank
    run = runs[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["world_size"] == 2
    first, second = summary["best_per_rank"]
    assert first == second  # validation metrics are all-reduced: the same on every rank
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # written by rank 0 only
    assert result.stdout.count("epoch 2/2") == 1  # printed by rank 0 only
    assert "2 processes (gloo)" in result.stdout
    # Rank 0 alone draws, logs and reports: one event file, one report.
    assert len(list((run / "tensorboard").iterdir())) == 1
    assert (run / "curves.png").is_file() and (run / "report.html").is_file()
    assert result.stdout.count("report:") == 1

    # A checkpoint trained this way loads in a single-process predict.
    predicted = single(
        "predict",
        f"input={data / 'image'}",
        f"checkpoint={run / 'checkpoints' / 'best.pt'}",
        f"output={tmp_path / 'single'}",
        cwd=tmp_path,
    )
    assert predicted.returncode == 0, predicted.stderr
    sharded = torchrun(
        "predict",
        f"input={data / 'image'}",
        f"checkpoint={run / 'checkpoints' / 'best.pt'}",
        f"output={tmp_path / 'sharded'}",
        cwd=tmp_path,
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert sharded.stdout.count("predicted 7 image(s)") == 1
    names = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "sharded").iterdir()) and len(names) == 7
    for name in names:
        assert (tmp_path / "single" / name).read_bytes() == (tmp_path / "sharded" / name).read_bytes()


def test_one_step_on_two_ranks_equals_one_step_with_the_global_batch(tmp_path: Path) -> None:
    """Two identical training images (so per-rank BatchNorm statistics equal the global ones), no
    augmentation: two ranks × batch 1 must take the same step as one process × batch 2."""
    data = write_dataset(tmp_path / "data", count=3, size=40)
    shutil.copy(data / "image" / "0.png", data / "image" / "1.png")
    shutil.copy(data / "label" / "0.png", data / "label" / "1.png")
    common = [
        "train",
        "data=folder",
        f"data.root={data}",
        "data.val_fraction=0.3",
        "data.augment.flip=0",
        "data.augment.rotate90=0",
        "optim=sgd",
        "optim.momentum=0",
        "optim.lr=0.1",
        "trainer.epochs=1",
        *TINY,
    ]
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    ddp = torchrun(*common, "trainer.batch_size=1", cwd=tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    alone = single(*common, "trainer.batch_size=2", cwd=tmp_path / "one")
    assert alone.returncode == 0, alone.stderr

    def weights(root: Path) -> dict[str, torch.Tensor]:
        (run,) = list((root / "outputs" / "train").iterdir())
        return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state_dict"]

    torch.manual_seed(0)  # the trainer seeds with trainer.seed=0 before it builds the network
    initial = build_network(ModelSpec("bilinear", 1, 1, 4, 2)).state_dict()
    trained_ddp, trained_alone = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    assert initial.keys() == trained_ddp.keys()
    for name, value in trained_alone.items():
        # BatchNorm's running variance uses n/(n-1) over the pixels each process saw (one image on a rank,
        # two in the single process): equal up to that correction. Parameters must match exactly.
        tolerance = {"rtol": 1e-3, "atol": 1e-5} if "running_var" in name else {"rtol": 0, "atol": 1e-5}
        assert torch.allclose(trained_ddp[name].float(), value.float(), **tolerance), name
    assert any(not torch.equal(initial[n], trained_alone[n]) for n in initial)  # a step really happened


def test_a_failing_run_stops_every_rank(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", count=4, size=32)
    result = torchrun("train", "data=folder", f"data.root={data}", *TINY, "trainer.sync_batchnorm=true", cwd=tmp_path)
    assert result.returncode != 0
    assert "trainer.sync_batchnorm=true needs CUDA" in result.stderr
    assert not (tmp_path / "outputs").exists()  # nothing half-made left behind
