"""End-to-end: the real CLI in a subprocess on tiny data in tmp_path."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import ISBI_TRAIN, TINY, assert_one_line_error, run_cli, write_dataset
from unetseg.tracking.curves import SWEEP_SIZE

pytestmark = pytest.mark.slow  # end-to-end: the real CLI in a subprocess (make test-fast skips them)


def train(cwd: Path, data_root: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("train", "data=folder", f"data.root={data_root}", *TINY, *extra, cwd=cwd)


def only_run_dir(cwd: Path, kind: str = "train") -> Path:
    runs = list((cwd / "outputs" / kind).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_help_version_and_usage(tmp_path: Path) -> None:
    for args in ([], ["--help"]):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 0 and "Usage: unetseg <command>" in result.stdout
        assert "train" in result.stdout and "predict" in result.stdout
    version = run_cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("unetseg 0.")
    train_help = run_cli("train", "--help", cwd=tmp_path)
    assert (
        train_help.returncode == 0
        and "unetseg train" in train_help.stdout
        and "model: bilinear, transposed" in train_help.stdout
        and "inference" not in train_help.stdout  # predict's and evaluate's settings are not a train group
    )
    predict_help = run_cli("predict", "--help", cwd=tmp_path)
    assert predict_help.returncode == 0 and "input=PATH" in predict_help.stdout
    assert not (tmp_path / "outputs").exists()


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    result = run_cli("train", "--cfg", "job", "model=transposed", "optim.lr=0.001", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "upsampling: transposed" in result.stdout and "lr: 0.001" in result.stdout


def test_train_then_predict(tmp_path: Path, dataset: Path) -> None:
    result = train(tmp_path, dataset, "trainer.epochs=2")
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "epoch 2/2" in (run_dir / "train.log").read_text()
    assert "cpu · " in result.stdout and " threads" in result.stdout  # the fast-path start-up line
    assert (run_dir / "checkpoints" / "best.pt").stat().st_mode & 0o044  # readable by others, as open() makes it
    for name in ("best.pt", "last.pt"):
        assert (run_dir / "checkpoints" / name).is_file()
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for key in (
        "train_loss",
        "val_loss",
        "dice",
        "iou",
        "pixel_error",
        "rand_error",
        "v_info",
        "lr",
        "dice_background",
        "iou_foreground",
    ):
        assert key in epochs[0]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed"
    # The best checkpoint is the epoch with the highest validation Dice, not the lowest training loss.
    best_epoch = max(epochs, key=lambda e: e["dice"])["epoch"]
    assert summary["best_epoch"] == best_epoch
    assert torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["epoch"] == best_epoch
    assert str(run_dir / "checkpoints" / "best.pt") in result.stdout

    test_images = write_dataset(tmp_path / "heldout", count=3, size=41, seed=7) / "image"
    before = sorted(p.name for p in test_images.iterdir())
    predicted = run_cli("predict", f"input={test_images}", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert "using the newest" in predicted.stdout and "best.pt" in predicted.stdout
    out_dir = only_run_dir(tmp_path, "predict")
    masks = sorted(out_dir.glob("*.png"))
    assert [m.name for m in masks] == ["0.png", "1.png", "2.png"]
    for mask in masks:
        values = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
        assert values.shape == (41, 41) and set(np.unique(values)) <= {0, 255}
    assert sorted(p.name for p in test_images.iterdir()) == before  # nothing written among the inputs
    assert "predicted 3 image(s)" in predicted.stdout and str(out_dir) in predicted.stdout

    single = run_cli(
        "predict",
        f"input={test_images / '1.png'}",
        f"output={tmp_path / 'one'}",
        f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}",
        "threshold=0.3",
        "save=[mask,probability,overlay]",
        "tta=flip",
        cwd=tmp_path,
    )
    assert single.returncode == 0, single.stderr
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["1.png", "1_overlay.png", "1_probability.png"]
    probability = cv2.imread(str(tmp_path / "one" / "1_probability.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(tmp_path / "one" / "1.png"), cv2.IMREAD_UNCHANGED)
    assert probability.dtype == np.uint16
    # the mask is the probability map thresholded at 0.3 (16-bit rounding may flip a pixel at the threshold)
    assert ((mask == 255) == (probability / 65535 >= 0.3)).mean() > 0.999
    assert cv2.imread(str(tmp_path / "one" / "1_overlay.png")).shape == (41, 41, 3)
    again = run_cli("predict", f"input={test_images / '1.png'}", f"output={tmp_path / 'one'}", cwd=tmp_path)
    assert_one_line_error(again, "already exist", "overwrite=true")


def test_same_seed_same_run(tmp_path: Path, dataset: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for cwd in (first, second):
        cwd.mkdir()
        result = train(cwd, dataset, "trainer.epochs=2")
        assert result.returncode == 0, result.stderr

    def epochs(cwd: Path) -> list[dict]:
        lines = (only_run_dir(cwd) / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"} for line in lines]

    assert epochs(first) == epochs(second)


def test_two_runs_started_together_get_their_own_directories(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "unetseg", "synthesize", "count=1", "size=16"]
    procs = [
        subprocess.Popen([*command, f"output=s{i}"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for i in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    assert len(list((tmp_path / "outputs" / "synthesize").iterdir())) == 2


def test_sweep_ends_with_a_summary(tmp_path: Path, dataset: Path) -> None:
    result = run_cli(
        "train", "-m", "model=bilinear,transposed", "data=folder", f"data.root={dataset}", *TINY, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "sweep summary" in result.stdout
    assert "shared by every job: data=folder" in result.stdout  # the table's rows show only what differs
    sweep_dir = only_run_dir(tmp_path, "sweep")
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert "model=bilinear" in rows[0]["overrides"] and "model=transposed" in rows[1]["overrides"]
    assert int(rows[1]["parameters"]) > int(rows[0]["parameters"])
    for row in rows:
        assert 0 <= float(row["best_dice"]) <= 1 and float(row["wall_time_s"]) >= 0 and row["epochs"] == "1"
    # The sweep's chart and report: one row per job, the best job marked, each job's own report linked.
    chart = cv2.imread(str(sweep_dir / "sweep.png"))
    assert chart is not None and chart.shape[:2] == (SWEEP_SIZE[1], SWEEP_SIZE[0])
    html = (sweep_dir / "report.html").read_text()
    assert html.count('<tr class="best"') == 1 and html.count("data-job=") == 2
    assert 'href="0/report.html"' in html and 'href="1/report.html"' in html
    again = run_cli("report", str(sweep_dir), cwd=tmp_path)
    assert again.returncode == 0 and "sweep report (2 jobs)" in again.stdout, again.stderr


def test_a_failing_sweep_job_does_not_stop_the_others(tmp_path: Path, dataset: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "image" / "2.png").write_bytes(b"corrupt")
    result = run_cli("train", "-m", "data=folder", f"data.root={broken},{dataset}", *TINY, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    rows = list(csv.DictReader((only_run_dir(tmp_path, "sweep") / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["failed", "completed"]
    assert "2.png" in rows[0]["error"]
    assert "sweep summary" in result.stdout and "1 job(s) failed" in result.stdout
    html = (only_run_dir(tmp_path, "sweep") / "report.html").read_text()
    assert html.count('<tr class="failed" data-job="0">') == 1 and '<tr class="best" data-job="1">' in html
    failed_job = run_cli("report", str(only_run_dir(tmp_path, "sweep") / "0"), cwd=tmp_path)
    assert_one_line_error(failed_job, "failed before its first epoch", "2.png")


def test_shell_completion_offers_model_options(tmp_path: Path) -> None:
    install = run_cli("-sc", "install=bash", cwd=tmp_path)
    assert install.returncode == 0 and "complete" in install.stdout and "hydra_bash_completion" in install.stdout
    query = run_cli("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "unetseg train mod"})
    assert query.returncode == 0
    assert {"model=", "model."} & set(query.stdout.split()), query.stdout
    options = run_cli("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "unetseg train model="})
    assert {"model=bilinear", "model=transposed"} <= set(options.stdout.split()), options.stdout
    commands = run_cli("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "unetseg tr"})
    assert commands.stdout.split() == ["train"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_installed_completion_script_completes_in_bash(tmp_path: Path) -> None:
    """Run Hydra's completion function in a real bash, as `eval "$(unetseg -sc install=bash)"` sets it up."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    launcher = bindir / "unetseg"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m unetseg "$@"\n')
    launcher.chmod(0o755)
    script = (
        'eval "$(unetseg -sc install=bash)"; COMP_LINE="unetseg train model=b"; COMP_POINT=${#COMP_LINE}; '
        'COMP_WORDS=(unetseg train model=b); COMP_CWORD=2; hydra_bash_completion; echo "${COMPREPLY[@]}"'
    )
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
    )
    assert "model=bilinear" in result.stdout.split(), result.stdout + result.stderr


needs_isbi = pytest.mark.skipif(
    not ISBI_TRAIN.is_dir(),
    reason=f"ISBI 2012 data not found at {ISBI_TRAIN} (../shared is absent "
    "in a fresh clone; set UNETSEG_ISBI_ROOT to point at isbi2012/train)",
)


@needs_isbi
def test_trains_a_few_steps_on_isbi(tmp_path: Path) -> None:
    result = run_cli(
        "train",
        "data=isbi",
        f"data.root={ISBI_TRAIN}",
        "model.base_channels=4",
        "trainer.epochs=1",
        "trainer.batch_size=4",
        "optim=adam",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "20 training, 5 validation images" in result.stdout
    summary = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert "dice_membrane" in summary["best"] and 0 <= summary["best"]["dice_membrane"] <= 1


@needs_isbi
def test_isbi_preset_trains_and_is_scored_on_the_held_out_slices(tmp_path: Path) -> None:
    # experiment=isbi as `make isbi` runs it, cut to two steps: crops, border weights, elastic, evaluate with TTA.
    trained = run_cli(
        "train",
        "experiment=isbi",
        f"data.root={ISBI_TRAIN}",
        "trainer.epochs=1",
        "data.samples_per_epoch=16",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    assert "20 training (256×256 crops), 16 samples per epoch, 5 validation images" in trained.stdout
    checkpoint = only_run_dir(tmp_path) / "checkpoints" / "best.pt"
    assert torch.load(checkpoint, weights_only=True)["threshold"] == 0.3
    scored = run_cli(
        "evaluate", f"checkpoint={checkpoint}", f"data.root={ISBI_TRAIN}", "tta=flip", "output=scores", cwd=tmp_path
    )
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    assert list(metrics["per_image"]) == ["20", "21", "22", "23", "24"]
    assert 0 <= metrics["mean"]["rand_error"] <= 1 and 0 <= metrics["mean"]["dice_membrane"] <= 1


def test_save_last_false_keeps_only_the_best_checkpoint(tmp_path: Path) -> None:
    result = run_cli("train", *TINY, "trainer.save_last=false", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.pt"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["checkpoint_last"] is None
    assert "not kept (trainer.save_last=false" in result.stdout


def test_training_on_masks_beside_their_images(tmp_path: Path) -> None:
    """The most common naming in the field, without a flag: 7.png with 7_mask.png in one folder."""
    source = write_dataset(tmp_path / "d", count=6)
    flat = tmp_path / "flat"
    flat.mkdir()
    for image in (source / "image").iterdir():
        shutil.copy(image, flat / image.name)
        shutil.copy(source / "label" / image.name, flat / f"{image.stem}_mask.png")
    result = run_cli("train", "data=folder", f"data.root={flat}", *TINY, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "images and masks side by side, label = image name + '_mask' beside the images" in result.stdout
    assert "5 training, 1 validation images" in result.stdout
