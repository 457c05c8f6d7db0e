"""Folds (data.folds=K data.fold=i: contiguous validation blocks) and ensembles (several checkpoints whose
probabilities predict and evaluate average): the split, the sweep's ensemble.yaml, and the averaging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import FP32, TINY, assert_one_line_error, run_cli, write_dataset
from unetseg.config import DataConfig, ModelSpec, register_schemas, to_typed
from unetseg.data.dataset import fold_blocks, load_splits
from unetseg.data.labels import LabelRule
from unetseg.data.normalize import PercentileNormalizer
from unetseg.data.synthetic import synthetic_pair
from unetseg.inference.predictor import Predictor, Tiling
from unetseg.model import build_network
from unetseg.model.checkpoint import Checkpoint, save_checkpoint
from unetseg.model.ensemble import checkpoint_paths, load_members, read_ensemble
from unetseg.reporting.sweeps import write_fold_ensemble
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import config_dir, register_resolvers

NORMALIZER = PercentileNormalizer(0.5, 99.5)
TORCH_FP32 = ["backend=torch", "device=cpu", "precision=fp32"]  # exact, and no OpenVINO conversion per member


# ---- folds ---------------------------------------------------------------------------------------------------


def test_fold_blocks_are_contiguous_and_cover_every_image_once() -> None:
    for count in range(2, 32):
        for folds in range(2, count + 1):
            blocks = fold_blocks(count, folds)
            assert len(blocks) == folds
            covered = [index for block in blocks for index in range(count)[block]]
            assert covered == list(range(count))  # in order: each block contiguous, every image once
            sizes = [block.stop - block.start for block in blocks]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1, (count, folds, sizes)


def data_config(*overrides: str) -> DataConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        register_resolvers()
        register_schemas()
        return to_typed(compose("train", overrides=list(overrides))).data


def test_a_fold_validates_on_its_block_and_trains_on_the_rest(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=7, size=24)
    names = [str(index) for index in range(7)]
    for fold, held_out in enumerate([names[0:3], names[3:5], names[5:7]]):  # 7 images in 3 folds: 3, 2, 2
        data = data_config("data=folder", f"data.root={root}", "data.folds=3", f"data.fold={fold}")
        train, val = load_splits(data, 1, LabelRule(1), NORMALIZER)
        assert val.names == held_out
        assert train.names == [name for name in names if name not in held_out]
        assert train.pairing and train.storage  # the start-up line still says how the files were paired and held
    synthetic = data_config("data.synthetic.num_images=5", "data.synthetic.size=16", "data.folds=5", "data.fold=4")
    train, val = load_splits(synthetic, 1, LabelRule(1), NORMALIZER)
    assert len(train) == 4 and val.names == ["synthetic_0_0004"]


def test_more_folds_than_images_is_one_line_at_load_time(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=3, size=24)
    data = data_config("data=folder", f"data.root={root}", "data.folds=4")
    with pytest.raises(
        UserError,
        match=r"data.folds=4, but data.root=.* holds 3 labelled image\(s\): choose data.folds between 2 and 3",
    ):
        load_splits(data, 1, LabelRule(1), NORMALIZER)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["data.folds=1"], ["data.folds=1", "at least 2 folds"]),
        (["data.folds=5", "data.fold=5"], ["data.fold=5", "folds are 0 to 4"]),
        (["data.folds=5", "data.fold=-1"], ["data.fold=-1", "folds are 0 to 4"]),
        (["data.fold=2"], ["data.fold=2 without data.folds", "data.folds=5"]),
        (["data=folder", "data.root=a", "data.val_root=b", "data.folds=3"], ["data.val_root=b", "data.val_root=null"]),
        (["data.synthetic.num_images=4", "data.folds=5"], ["data.folds=5", "num_images=4", "between 2 and 4"]),
    ],
)
def test_bad_fold_settings_are_one_line(tmp_path: Path, overrides: list[str], fragments: list[str]) -> None:
    assert_one_line_error(run_cli("train", *overrides, cwd=tmp_path), *fragments)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_more_folds_than_images_in_a_folder_is_one_line(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=3, size=24)
    result = run_cli("train", "data=folder", f"data.root={root}", "data.folds=4", *TINY, cwd=tmp_path)
    assert_one_line_error(result, "data.folds=4", "holds 3 labelled image(s)", "between 2 and 3")


# ---- ensembles -----------------------------------------------------------------------------------------------


def constant_checkpoint(
    probability: float, threshold: float = 0.5, class_names: tuple[str, ...] = ("background", "cell"), depth: int = 2
) -> Checkpoint:
    """A binary network whose last layer is zeroed with a constant bias: it outputs ``probability`` everywhere."""
    spec = ModelSpec("bilinear", 1, 1, 4, depth)
    network = build_network(spec)
    with torch.no_grad():
        network.outc.weight.zero_()
        network.outc.bias.fill_(math.log(probability / (1 - probability)))
    return Checkpoint(network.state_dict(), spec, NORMALIZER, list(class_names), threshold, 1, {})


def test_an_ensemble_averages_its_members_probabilities() -> None:
    image = synthetic_pair(0, 0, 48)[0][None]
    members = [constant_checkpoint(0.2, threshold=0.4), constant_checkpoint(0.7, threshold=0.6, depth=3)]
    for tiling in (Tiling(), Tiling(tile=32, overlap=0.5), Tiling(tta="d4")):
        predictor = Predictor(members, FP32, tiling=tiling)
        np.testing.assert_allclose(predictor.probabilities(image), 0.45, atol=1e-6)
        assert predictor.size_multiple == 8  # the deeper member's input multiple
    # the members' thresholds differ: their mean decides, and the start-up line says so
    assert predictor.threshold == pytest.approx(0.5) and "the mean of the members' 0.4, 0.6" in predictor.describe()
    assert (predictor.predict(image) == 0).all()  # 0.45 < 0.5
    given = Predictor(members, FP32, threshold=0.3)
    assert given.threshold == 0.3 and "mean" not in given.describe() and (given.predict(image) == 1).all()
    single = Predictor(members[0], FP32)
    np.testing.assert_allclose(single.probabilities(image), 0.2, atol=1e-6)
    assert single.threshold == 0.4


def test_members_that_do_not_fit_together_are_refused(tmp_path: Path) -> None:
    paths = {}
    for name, checkpoint in {
        "a": constant_checkpoint(0.2),
        "b": constant_checkpoint(0.3, class_names=("background", "nucleus")),
        "c": constant_checkpoint(0.4),
    }.items():
        paths[name] = tmp_path / f"{name}.pt"
        save_checkpoint(checkpoint, paths[name])
    with pytest.raises(UserError, match=r"a\.pt and .*b\.pt do not fit together: class names .*cell.* vs .*nucleus"):
        load_members([paths["a"], paths["b"]])
    assert len(load_members([paths["a"], paths["c"]])) == 2
    with pytest.raises(UserError, match="twice"):
        checkpoint_paths([str(paths["a"]), str(tmp_path / "." / "a.pt")], "outputs")


def test_a_fold_sweep_writes_an_ensemble_of_its_completed_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    statuses = {"0": "completed", "1": "failed", "2": "completed"}
    rows = []
    for job, status in statuses.items():
        (sweep / job / "checkpoints").mkdir(parents=True)
        if status == "completed":
            (sweep / job / "checkpoints" / "best.pt").write_bytes(b"")
        (sweep / job / ".hydra").mkdir()
        (sweep / job / ".hydra" / "config.yaml").write_text("data:\n  folds: 3\n")
        overrides = [f"data.fold={job}", "data.folds=3"]
        rows.append({"job": job, "override_list": overrides, "status": status, "run_dir": str(sweep / job)})
    rows[1]["error"] = "out of memory"
    line = write_fold_ensemble(sweep, rows)
    assert line is not None and "ensemble of 2 fold(s)" in line and "left out: job 1 (fold 1, failed)" in line
    written = OmegaConf.to_container(OmegaConf.load(sweep / "ensemble.yaml"))
    assert written["folds"] == 3 and [m["fold"] for m in written["members"]] == [0, 2]  # type: ignore[index]
    assert written["left_out"] == [{"job": "1", "fold": 1, "status": "failed", "why": "out of memory"}]  # type: ignore[index]
    members = [(sweep / job / "checkpoints" / "best.pt").resolve() for job in ("0", "2")]
    assert read_ensemble(sweep / "ensemble.yaml") == members
    # a sweep over anything else (here: the learning rate as well) writes none
    rows[0]["override_list"] = ["data.fold=0", "optim.lr=0.1"]
    assert write_fold_ensemble(tmp_path, rows) is None and not (tmp_path / "ensemble.yaml").exists()


@pytest.mark.slow
def test_predict_with_a_list_of_checkpoints_averages_them(tmp_path: Path) -> None:
    save_checkpoint(constant_checkpoint(0.2), tmp_path / "a.pt")
    save_checkpoint(constant_checkpoint(0.6), tmp_path / "b.pt")
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "scan.png"), synthetic_pair(0, 0, 40)[0])
    result = run_cli(
        "predict", "input=in/scan.png", "checkpoint=[a.pt,b.pt]", "output=out", "save=[mask,probability]",
        "probability_format=tiff", *TORCH_FP32, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ensemble (2 members)" in result.stdout
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out" / "scan_probability.tif"), 0.4, atol=1e-6)
    assert (cv2.imread(str(tmp_path / "out" / "scan.png"), cv2.IMREAD_UNCHANGED) == 0).all()  # 0.4 < 0.5

    save_checkpoint(constant_checkpoint(0.6, class_names=("background", "nucleus")), tmp_path / "c.pt")
    refused = run_cli("predict", "input=in/scan.png", "checkpoint=[a.pt,c.pt]", "output=bad", *TORCH_FP32, cwd=tmp_path)
    assert_one_line_error(refused, "a.pt and", "c.pt do not fit together", "class names")
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_a_fold_sweep_makes_an_ensemble_that_predicts_and_evaluates(tmp_path: Path) -> None:
    data = ["data.synthetic.num_images=4", "data.synthetic.size=32"]
    result = run_cli("train", "-m", "data.folds=2", "data.fold=0,1", *data, *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fold 0 of 2 validates" in result.stdout and "fold 1 of 2 validates" in result.stdout  # start-up lines
    sweep = next((tmp_path / "outputs" / "sweep").iterdir())
    for job in ("0", "1"):
        facts = json.loads((sweep / job / "metrics.json").read_text())["data"]
        assert (facts["fold"], facts["folds"], facts["train_images"], facts["val_images"]) == (int(job), 2, 2, 2)
    ensemble = (sweep / "ensemble.yaml").relative_to(tmp_path)  # as the sweep printed it, and as typed below
    assert f"ensemble of 2 fold(s): {ensemble}" in result.stdout
    assert read_ensemble(tmp_path / ensemble) == [
        (sweep / job / "checkpoints" / "best.pt").resolve() for job in ("0", "1")
    ]

    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "scan.png"), synthetic_pair(1, 0, 32)[0])
    predicted = run_cli(
        "predict", "input=in/scan.png", f"checkpoint={ensemble}", "output=out", *TORCH_FP32, cwd=tmp_path
    )
    assert predicted.returncode == 0, predicted.stderr
    assert f"ensemble {ensemble} (2 members)" in predicted.stdout and (tmp_path / "out" / "scan.png").is_file()

    evaluated = run_cli(
        "evaluate", f"checkpoint={sweep}", "data=synthetic", *data, "data.folds=2", "data.fold=1", "output=scores",
        *TORCH_FP32, cwd=tmp_path,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert "using its ensemble.yaml" in evaluated.stdout
    report = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    assert report["images"] == 2 and len(report["checkpoint"]) == 2 and "split val, fold 1 of 2" in report["source"]
