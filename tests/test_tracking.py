"""Curves, history, pictures and the loggers' fault handling (no CLI runs: see test_report.py for those)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from unetseg.runtime.errors import UserError
from unetseg.tracking.curves import CURVES_SIZE, SWEEP_SIZE, CurvesFile, SweepJob, run_curves, sweep_curves
from unetseg.tracking.history import best_epoch, read_history, series
from unetseg.tracking.loggers import LOGGER_PACKAGES, Loggers, RunLogger, check_logger_packages, flatten
from unetseg.tracking.pictures import (
    FALSE_FOREGROUND,
    MISSED_FOREGROUND,
    classes_rgb,
    error_rgb,
    input_rgb,
    positive_class,
)

CLASSES = ["membrane", "cell"]


def history(epochs: int) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for epoch in range(1, epochs + 1):
        dice = 1 - 1 / (epoch + 1) + rng.normal(0, 0.01)
        records.append(
            {
                "epoch": epoch,
                "train_loss": 1 / epoch,
                "lr": 1e-3 * 0.9**epoch,
                "val_loss": 1.1 / epoch,
                "dice": dice,
                "pixel_error": 0.2 / epoch,
                "dice_membrane": dice - 0.1,
                "dice_cell": dice + 0.05,
                "rand_error": float("nan") if epoch == 1 else 0.5 / epoch,
                "epoch_time_s": 1.0,
                "best": epoch in (1, 3),
            }
        )
    return records


def decode(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a PNG OpenCV can read"
    return image


def test_run_curves_is_a_png_of_the_stated_size_with_something_drawn() -> None:
    image = decode(run_curves(history(5), CLASSES, "dice", "train/run"))
    assert image.shape[:2] == (CURVES_SIZE[1], CURVES_SIZE[0])
    assert image.std() > 20  # lines and text on white, not a blank canvas


def test_sweep_curves_is_a_png_of_the_stated_size() -> None:
    jobs = [SweepJob("0", "0: model=bilinear", history(4), 0.8), SweepJob("1", "1: model=transposed", [], None)]
    image = decode(sweep_curves(jobs, "dice"))
    assert image.shape[:2] == (SWEEP_SIZE[1], SWEEP_SIZE[0])


def test_history_skips_a_cut_line_and_refuses_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(record) for record in history(3)]
    path.write_text("\n".join(lines) + '\n{"epoch": 4, "train_lo', encoding="utf-8")
    records = read_history(path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert best_epoch(records) == 3
    assert series(records, "rand_error") == ([2, 3], [0.25, 0.5 / 3])  # NaN left out
    path.write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="holds no epoch"):
        read_history(path)
    with pytest.raises(UserError, match="does not exist"):
        read_history(tmp_path / "missing.jsonl")


def test_curves_file_stays_within_its_time_budget(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in history(3)), encoding="utf-8")
    curves = CurvesFile(tmp_path, CLASSES, "dice", budget=0.01)
    assert curves.update(training_s=10.0)  # the first drawing costs nothing yet: drawn
    cost = curves.drawing_s
    assert cost > 0 and (tmp_path / "curves.png").is_file()
    assert not curves.update(training_s=cost)  # spent 100% of the training time drawing: skipped
    assert curves.update(training_s=cost, final=True)  # the end is always drawn
    assert curves.update(training_s=1000 * curves.drawing_s)  # enough training time since: drawn


def test_error_map_colours_false_and_missed_foreground() -> None:
    image = np.full((1, 2, 3), 0.5, np.float32)
    truth = np.array([[1, 1, 0], [0, 1, 0]], np.uint8)
    predicted = np.array([[1, 0, 1], [0, 1, 0]], np.uint8)
    picture = error_rgb(image, truth, predicted, positive=1)
    assert tuple(picture[0, 1]) == MISSED_FOREGROUND  # truth 1, predicted 0
    assert tuple(picture[0, 2]) == FALSE_FOREGROUND  # truth 0, predicted 1
    assert tuple(picture[0, 0]) == tuple(picture[1, 1]) == (63, 63, 63)  # right: the input, dimmed
    # Membrane (class 0) as the class of interest swaps the roles.
    swapped = error_rgb(image, truth, predicted, positive=0)
    assert tuple(swapped[0, 1]) == FALSE_FOREGROUND and tuple(swapped[0, 2]) == MISSED_FOREGROUND


def test_pictures_of_inputs_and_classes() -> None:
    assert input_rgb(np.array([[[0.0, 1.0]]], np.float32)).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    assert classes_rgb(np.array([[0, 1]], np.uint8), 2).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    assert classes_rgb(np.array([[0, 2]], np.uint8), 3)[0, 1].tolist() != [255, 255, 255]  # palette colours
    assert positive_class(CLASSES, "dice_membrane") == 0
    assert positive_class(CLASSES, "dice") == 1
    assert positive_class(["bg", "a", "b"], "iou") is None


class FullDisk(RunLogger):
    name = "full-disk"

    def __init__(self) -> None:
        self.calls = 0

    def log_epoch(self, epoch: int, values: dict) -> None:
        self.calls += 1
        raise OSError(errno.ENOSPC, "No space left on device")


class Recording(RunLogger):
    name = "recording"

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def log_epoch(self, epoch: int, values: dict) -> None:
        self.epochs.append(epoch)


def test_a_failing_logger_is_reported_once_and_the_others_go_on(capsys: pytest.CaptureFixture[str]) -> None:
    failing, working = FullDisk(), Recording()
    loggers = Loggers([failing, working])
    for epoch in (1, 2, 3):
        loggers.log_epoch(epoch, {"dice": 0.5})
    assert failing.calls == 1 and working.epochs == [1, 2, 3]
    out = capsys.readouterr().out
    assert out.count("full-disk logging failed") == 1 and "No space left on device" in out


def test_a_missing_logger_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(LOGGER_PACKAGES, "mlflow", ("unetseg_no_such_package", "unetseg[mlflow]"))
    with pytest.raises(UserError, match=r"pip install 'unetseg\[mlflow\]'"):
        check_logger_packages(["mlflow"])
    check_logger_packages(["tensorboard"])  # installed with the test extra


def test_flatten_gives_dotted_keys() -> None:
    assert flatten({"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "seed": 0}) == {
        "optim.lr": 1e-3,
        "optim.betas": [0.9, 0.99],
        "seed": 0,
    }
