"""`unetseg evaluate` end to end: the real CLI on tiny data; its figures equal scoring predict's masks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import TINY, assert_one_line_error, run_cli, write_dataset
from unetseg.config import register_schemas
from unetseg.runner import preflight
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import register_resolvers
from unetseg.scoring.board import ScoreBoard

pytestmark = pytest.mark.slow  # end-to-end: the real CLI in a subprocess (make test-fast skips them)

CLASSES = ["background", "foreground"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny trained checkpoint and its data folder (10 images: 8 train, 2 validation)."""
    root = tmp_path_factory.mktemp("evaluate")
    data = write_dataset(root / "data", count=10, size=48)
    result = run_cli("train", "data=folder", f"data.root={data}", *TINY, "trainer.epochs=3", cwd=root)
    assert result.returncode == 0, result.stderr
    return next((root / "outputs" / "train").glob("*/checkpoints/best.pt")), data


def read_report(cwd: Path) -> dict:
    runs = list((cwd / "outputs" / "evaluate").iterdir())
    assert len(runs) == 1, runs
    return json.loads((runs[0] / "metrics.json").read_text())


def test_evaluate_scores_the_validation_split_as_predict_masks_score(
    tmp_path: Path, trained: tuple[Path, Path]
) -> None:
    checkpoint, data = trained
    settings = ["tile_size=32", "overlap=0.5", "tta=flip"]  # tiled, with TTA: the predictor's full path
    result = run_cli(
        "evaluate", f"checkpoint={checkpoint}", "data=folder", f"data.root={data}", *settings, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "Rand error" in result.stdout and "V_info" in result.stdout
    report = read_report(tmp_path)
    assert list(report["per_image"]) == ["8", "9"] and report["images"] == 2
    assert report["settings"]["tta"] == "flip" and report["settings"]["tile_size"] == 32

    # The same images through unetseg predict, scored here: the same numbers.
    val_images = tmp_path / "val"
    val_images.mkdir()
    for name in ("8", "9"):
        (val_images / f"{name}.png").write_bytes((data / "image" / f"{name}.png").read_bytes())
    masks = tmp_path / "masks"
    predicted = run_cli(
        "predict", f"input={val_images}", f"checkpoint={checkpoint}", f"output={masks}", *settings, cwd=tmp_path
    )
    assert predicted.returncode == 0, predicted.stderr
    board = ScoreBoard(CLASSES)
    for name in ("8", "9"):
        mask = (cv2.imread(str(masks / f"{name}.png"), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
        truth = (cv2.imread(str(data / "label" / f"{name}.png"), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
        board.add(name, mask, truth)
    expected = board.summary()
    for key in ("pixel_error", "dice_background", "iou_foreground", "rand_error", "v_info"):
        assert report["mean"][key] == pytest.approx(expected[key], abs=1e-6), key


def test_evaluate_input_and_labels_folders(tmp_path: Path, trained: tuple[Path, Path]) -> None:
    checkpoint, data = trained
    args = [f"checkpoint={checkpoint}", f"input={data / 'image'}", f"labels={data / 'label'}", "tile_size=null"]
    result = run_cli("evaluate", *args, f"output={tmp_path / 'scores'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    assert report["images"] == 10 and 0 <= report["mean"]["pixel_error"] <= 1
    again = run_cli("evaluate", *args, f"output={tmp_path / 'scores'}", cwd=tmp_path)
    assert_one_line_error(again, "metrics.json already exists", "overwrite=true")


def test_evaluate_bad_input(tmp_path: Path, trained: tuple[Path, Path]) -> None:
    checkpoint, data = trained
    only_input = run_cli("evaluate", f"checkpoint={checkpoint}", f"input={data / 'image'}", cwd=tmp_path)
    assert_one_line_error(only_input, "give both input=IMAGES and labels=LABELS")
    register_resolvers()  # settings checks through the runner's preflight, as the CLI runs it first
    register_schemas()
    with pytest.raises(UserError, match="nothing to evaluate on"):
        preflight("evaluate", [f"checkpoint={checkpoint}"], multirun=False)
    with pytest.raises(UserError, match="split=test"):
        preflight("evaluate", [f"checkpoint={checkpoint}", f"data.root={data}", "split=test"], multirun=False)
    labels = write_dataset(tmp_path / "other", count=2, size=48) / "label"
    (labels / "1.png").unlink()
    unpaired = run_cli(
        "evaluate", f"checkpoint={checkpoint}", f"input={data / 'image'}", f"labels={labels}", cwd=tmp_path
    )
    assert unpaired.returncode == 2 and "Traceback" not in unpaired.stderr
    overlay = run_cli(
        "predict",
        f"input={data / 'image'}",
        f"checkpoint={checkpoint}",
        "save=[overlay]",
        "overlay_classes=[nucleus]",
        f"output={tmp_path / 'o'}",
        cwd=tmp_path,
    )
    assert_one_line_error(overlay, "overlay_classes=['nucleus']", "background, foreground")
    missing = run_cli("evaluate", "checkpoint=nope.pt", f"data.root={data}", cwd=tmp_path)
    assert_one_line_error(missing, "nope.pt", "does not exist")
    assert not (tmp_path / "outputs" / "evaluate").exists() or not any((tmp_path / "outputs" / "evaluate").iterdir())
