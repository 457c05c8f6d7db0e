"""Every kind of bad input: one line naming the problem and the fix, non-zero exit, no traceback,
nothing written (no run directory for config errors, no file among the inputs)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import TINY, assert_one_line_error, run_cli, write_dataset

pytestmark = pytest.mark.slow  # end-to-end: the real CLI in a subprocess (make test-fast skips them)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["trian"], ["unknown command 'trian'", "train"]),
        (["train", "optim.lrr=1"], ["optim.lrr", "did you mean optim.lr"]),
        (["train", "trainer.lr=1e-3"], ["trainer.lr", "did you mean optim.lr?"]),  # the right name in another group
        (["train", "+optim.lrr=1"], ["optim.lrr", "no such key"]),
        (["train", "model=bilineer"], ["model=bilineer", "did you mean model=bilinear"]),
        (["train", "trainer.epochs=abc"], ["trainer.epochs", "Integer"]),
        (["train", "model.upsampling=nearest"], ["model.upsampling", "bilinear, transposed"]),
        (["train", "optim.lr=-1"], ["optim.lr", "> 0"]),
        (["train", "data.val_fraction=1.5"], ["data.val_fraction", "between 0 and 1"]),
        (["train", "data=isbi"], ["data.root is not set"]),
        (["train", "model=bilinear,transposed"], ["is a sweep", "-m"]),
        (["train", "-m", "--cfg", "job"], ["cannot be combined"]),
        (["train", "-m", "optim.lr=1e-3,-1"], ["optim.lr=-1.0"]),
        (["predict"], ["input is not set"]),
        (["predict", "input=x", "save=[mask,heatmap]"], ["save=", "mask, probability, overlay"]),
        (["predict", "input=x", "overlap=1"], ["overlap=1.0", "[0, 1)"]),
        (["predict", "input=x", "probability_format=jpeg"], ["probability_format", "png, tiff"]),
        (["predict", "input=x", "overlay_style=fill"], ["overlay_style", "tint, outline"]),
        (["train", "--foo"], ["unrecognized arguments: --foo", "unetseg train --help"]),
        (["train", "model"], ["'model' is not an override", "KEY=VALUE"]),
        (["train", "data.root=somewhere"], ["data=synthetic makes its own images", "data=isbi"]),
        (["predict", "input=x", "model=transposed"], ["model: no such key", "checkpoint"]),
    ],
)
def test_config_errors_fail_before_any_output(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert result.returncode == 2
    assert not (tmp_path / "outputs").exists()


def test_missing_data_folder(tmp_path: Path) -> None:
    result = run_cli(
        "train", "data=isbi", "data.root=nowhere", *TINY, "trainer.loggers=[tensorboard,mlflow]", cwd=tmp_path
    )
    assert_one_line_error(result, "nowhere", "does not exist")
    assert not list((tmp_path / "outputs" / "train").iterdir())  # no empty run directory left behind
    assert not (tmp_path / "mlruns").exists()  # the loggers start only once the data has loaded


def test_images_too_small_for_the_depth(tmp_path: Path) -> None:
    result = run_cli(
        "train", "data.synthetic.size=16", "data.synthetic.num_images=4", "model.base_channels=2", cwd=tmp_path
    )
    assert_one_line_error(result, "too small for model.depth=4", "lower model.depth")


def test_wrong_subfolder_names_are_listed(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=2, size=32)
    result = run_cli("train", "data=isbi", f"data.root={root}", "data.image_dir=images", *TINY, cwd=tmp_path)
    assert_one_line_error(result, "data.image_dir=images", "folders in", "image, label")


def test_empty_data_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "image").mkdir(parents=True)
    (tmp_path / "empty" / "label").mkdir()
    result = run_cli("train", "data=isbi", "data.root=empty", *TINY, cwd=tmp_path)
    assert_one_line_error(result, "no images", "empty")


def test_unpaired_files_are_named(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=32)
    (root / "label" / "3.png").rename(root / "label" / "extra.png")
    result = run_cli("train", "data=isbi", f"data.root={root}", *TINY, cwd=tmp_path)
    assert_one_line_error(result, "images without a label", "3.png", "labels without an image: extra.png")


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=32)
    (root / "image" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = run_cli("train", "data=isbi", f"data.root={root}", *TINY, cwd=tmp_path)
    assert_one_line_error(result, "1.png", "corrupt")


def test_size_mismatch(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=32)
    cv2.imwrite(str(root / "label" / "2.png"), np.zeros((30, 32), np.uint8))
    result = run_cli("train", "data=isbi", f"data.root={root}", *TINY, cwd=tmp_path)
    assert_one_line_error(result, "2.png", "same size")


def test_label_with_too_many_values(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=32)
    cv2.imwrite(str(root / "label" / "0.png"), (np.arange(32 * 32) % 5).astype(np.uint8).reshape(32, 32))
    result = run_cli("train", "data=isbi", f"data.root={root}", *TINY, cwd=tmp_path)
    assert_one_line_error(result, "0.png", "distinct values", "label_encoding=instance")


def test_instance_map_label_is_accepted_when_declared(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=32)
    cv2.imwrite(str(root / "label" / "0.png"), (np.arange(32 * 32) % 5).astype(np.uint8).reshape(32, 32))
    result = run_cli("train", "data=isbi", f"data.root={root}", "data.label_encoding=instance", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "d", count=2, size=32) / "image"


def test_missing_checkpoint(tmp_path: Path, images: Path) -> None:
    result = run_cli("predict", f"input={images}", "checkpoint=nope.pt", cwd=tmp_path)
    assert_one_line_error(result, "nope.pt", "does not exist")


def test_no_training_run_yet(tmp_path: Path, images: Path) -> None:
    result = run_cli("predict", f"input={images}", cwd=tmp_path)
    assert_one_line_error(result, "no training run with checkpoints/best.pt", "unetseg train")


def test_not_a_checkpoint(tmp_path: Path, images: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    result = run_cli("predict", f"input={images}", "checkpoint=foreign.pt", cwd=tmp_path)
    assert_one_line_error(result, "foreign.pt", "not a unetseg checkpoint")


def test_predict_points_at_the_image_subfolder(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=1, size=32)
    result = run_cli("predict", f"input={root}", cwd=tmp_path)
    assert_one_line_error(result, "no images", f"use input={root / 'image'}")


def test_predict_checks_every_input_before_writing(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    trained = run_cli(
        "train", "data=isbi", f"data.root={write_dataset(tmp_path / 'd', count=3, size=32)}", *TINY, cwd=model_dir
    )
    assert trained.returncode == 0, trained.stderr
    inputs = write_dataset(tmp_path / "p", count=3, size=32) / "image"
    (inputs / "2.png").write_bytes(b"not an image")
    result = run_cli(
        "predict", f"input={inputs}", f"output={tmp_path / 'masks'}", "runs_root=model/outputs", cwd=tmp_path
    )
    assert_one_line_error(result, "2.png", "corrupt")
    assert not (tmp_path / "masks").exists()


def test_predict_glob_without_matches(tmp_path: Path) -> None:
    result = run_cli("predict", "input=nothing/*.tif", cwd=tmp_path)
    assert_one_line_error(result, "input=nothing/*.tif matches no images")


def test_predict_input_without_images(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("no images here")
    result = run_cli("predict", "input=nothing", cwd=tmp_path)
    assert_one_line_error(result, "no images", "nothing")


@pytest.mark.parametrize("output", ["{images}", "{images}/masks"])
def test_output_inside_input_folder_is_refused(tmp_path: Path, images: Path, output: str) -> None:
    before = sorted(p.name for p in images.iterdir())
    result = run_cli("predict", f"input={images}", f"output={output.format(images=images)}", cwd=tmp_path)
    assert_one_line_error(result, "inside the input folder")
    assert sorted(p.name for p in images.iterdir()) == before


def test_a_failing_predict_sweep_job_sets_the_exit_code(tmp_path: Path, images: Path) -> None:
    result = run_cli("predict", "-m", f"input={images},missing", "checkpoint=nope.pt", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
