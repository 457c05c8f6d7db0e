"""Objects end to end through the CLI: synthesize nuclei, train the boundary target, predict instances and
measurements (images and stacks), evaluate the object scores; and the one-line refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from conftest import TINY, assert_one_line_error, run_cli, trained_checkpoint
from unetseg.model.checkpoint import save_checkpoint
from unetseg.scoring.regions import adapted_rand_error, connected_regions, contingency

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic nuclei (image/, label/, instances/) and a boundary network trained on them for a few epochs."""
    root = tmp_path_factory.mktemp("nuclei")
    made = run_cli("synthesize", "output=data", "kind=nuclei", "count=6", "size=64", "seed=3", cwd=root)
    assert made.returncode == 0, made.stderr
    train = run_cli(
        "train",
        "experiment=nuclei",
        "data=folder",
        "data.root=data",
        "data.label_dir=instances",
        *TINY,
        "trainer.epochs=2",
        "hydra.run.dir=run",
        cwd=root,
    )
    assert train.returncode == 0, train.stdout + train.stderr
    assert "AP50" in train.stdout
    return root


def test_synthesize_writes_instance_maps(nuclei: Path) -> None:
    instances = nuclei / "data" / "instances" / "0.png"
    ids = cv2.imread(str(instances), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(nuclei / "data" / "label" / "0.png"), cv2.IMREAD_UNCHANGED)
    assert ids.dtype == np.uint16 and ids.max() >= 2
    assert np.array_equal(ids > 0, mask > 0)


def test_predict_writes_instances_and_measurements(nuclei: Path) -> None:
    result = run_cli(
        "predict",
        "input=data/image",
        "checkpoint=run/checkpoints/best.pt",
        "output=pred",
        "save=[mask,instances,objects]",
        "pixel_size=0.5",
        "instances.min_size=1",
        cwd=nuclei,
    )
    assert result.returncode == 0, result.stderr
    assert "objects by boundary watershed" in result.stdout
    for index in range(6):
        objects = tifffile.imread(nuclei / "pred" / f"{index}_instances.tif")
        assert objects.dtype == np.uint16 and objects.shape == (64, 64)
        with (nuclei / "pred" / f"{index}_objects.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == objects.max()
        assert sum(int(row["area_px"]) for row in rows) == np.count_nonzero(objects)
        assert all(float(row["area_um2"]) == pytest.approx(int(row["area_px"]) * 0.25) for row in rows)
        assert f"{index}.png: {objects.max()} object(s)" in result.stdout


def test_a_stack_gives_a_stack_and_one_table(nuclei: Path) -> None:
    pages = [cv2.imread(str(nuclei / "data" / "image" / f"{i}.png"), cv2.IMREAD_UNCHANGED) for i in range(3)]
    (nuclei / "stacks").mkdir()
    tifffile.imwrite(nuclei / "stacks" / "stack.tif", np.stack(pages), photometric="minisblack")
    result = run_cli(
        "predict",
        "input=stacks/stack.tif",
        "checkpoint=run/checkpoints/best.pt",
        "output=stack-out",
        "save=[instances,objects]",
        "instances.min_size=1",
        cwd=nuclei,
    )
    assert result.returncode == 0, result.stderr
    with tifffile.TiffFile(nuclei / "stack-out" / "stack_instances.tif") as tif:
        assert len(tif.pages) == 3
        maps = [page.asarray() for page in tif.pages]
    with (nuclei / "stack-out" / "stack_objects.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for page, objects in enumerate(maps, start=1):
        on_page = [row for row in rows if row["page"] == str(page)]
        assert len(on_page) == objects.max()


def test_evaluate_reports_object_scores(nuclei: Path) -> None:
    result = run_cli(
        "evaluate",
        "checkpoint=run/checkpoints/best.pt",
        "input=data/image",
        "labels=data/instances",
        "output=eval",
        cwd=nuclei,
    )
    assert result.returncode == 0, result.stderr
    assert "AP50" in result.stdout
    report = json.loads((nuclei / "eval" / "metrics.json").read_text())
    assert 0 <= report["mean"]["ap50"] <= 1 and report["mean"]["count_error"] >= 0
    objects = report["objects"]
    assert objects["method"] == "boundary" and objects["true_objects"] > 0
    assert set(objects["per_threshold"]) == {f"{0.5 + 0.05 * i:.2f}" for i in range(10)}
    row = objects["per_threshold"]["0.50"]
    assert row["tp"] + row["fn"] == objects["true_objects"] and row["tp"] + row["fp"] == objects["predicted_objects"]


def test_a_boundary_network_against_masks_points_at_the_instance_maps(nuclei: Path) -> None:
    result = run_cli(
        "evaluate", "checkpoint=run/checkpoints/best.pt", "input=data/image", "labels=data/label", cwd=nuclei
    )
    assert_one_line_error(result, "is a binary mask", "labels=DIR/instances")


def test_instances_from_a_network_without_foreground_is_one_line(tmp_path: Path, dataset: Path) -> None:
    checkpoint = trained_checkpoint(3)  # three classes, trained on masks: nothing to split into objects
    save_checkpoint(checkpoint, tmp_path / "three.pt")
    result = run_cli(
        "predict", f"input={dataset / 'image'}", "checkpoint=three.pt", "output=out", "save=[instances]", cwd=tmp_path
    )
    assert_one_line_error(result, "no foreground to split into objects")
    assert not (tmp_path / "out").exists()


def test_bad_object_input_is_one_line(tmp_path: Path, dataset: Path) -> None:
    """Through the CLI: a bad value and binary labels for the boundary target (the other settings checks
    are the same runner path; tests/test_objects.py checks them in-process)."""
    save_checkpoint(trained_checkpoint(), tmp_path / "one.pt")
    image = f"input={dataset / 'image'}"
    result = run_cli("predict", image, "checkpoint=one.pt", "output=out", "pixel_size=0", cwd=tmp_path)
    assert_one_line_error(result, "pixel_size=0", "positive")
    assert not (tmp_path / "out").exists()
    result = run_cli(
        "train", "experiment=nuclei", "data=folder", f"data.root={dataset}", *TINY, "hydra.run.dir=binary", cwd=tmp_path
    )
    assert_one_line_error(result, "data.target=boundary", "needs instance label maps", "0.png")
    assert not (tmp_path / "binary" / "checkpoints").exists()


def test_membrane_instances_give_evaluates_rand_error(tmp_path: Path) -> None:
    """One definition of the cells, through the CLI: the instance maps predict writes for a membrane network
    (nothing dropped) have exactly the adapted Rand error that evaluate reports for the same images."""
    assert run_cli("synthesize", "output=data", "count=3", "size=96", "seed=9", cwd=tmp_path).returncode == 0
    train = run_cli("train", *TINY, "trainer.epochs=2", "hydra.run.dir=run", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    common = ["checkpoint=run/checkpoints/best.pt", "instances.min_size=0"]
    predicted = run_cli("predict", "input=data/image", "output=pred", "save=[instances]", *common, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    evaluated = run_cli("evaluate", "input=data/image", "labels=data/label", "output=eval", *common, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    per_image = json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_image"]
    for index in range(3):
        truth = connected_regions(
            (cv2.imread(str(tmp_path / "data" / "label" / f"{index}.png"), 0) > 0).astype(np.uint8)
        )
        objects = tifffile.imread(tmp_path / "pred" / f"{index}_instances.tif").astype(np.int64)
        rand_error = adapted_rand_error(contingency(truth, objects))
        assert rand_error == pytest.approx(per_image[str(index)]["rand_error"], abs=1e-6)
