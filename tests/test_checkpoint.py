"""Checkpoints (atomic, weights_only, foreign files) and the output head's decision rule (threshold on the
sigmoid, argmax for several classes)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg.config import ModelSpec
from unetseg.data.normalize import PercentileNormalizer
from unetseg.inference.predictor import Predictor
from unetseg.model import build_network
from unetseg.model.checkpoint import Checkpoint, find_checkpoint, load_checkpoint, save_checkpoint
from unetseg.model.head import predict_classes
from unetseg.runtime.errors import UserError
from unetseg.runtime.precision import choose_fast_path


def test_threshold_applies_to_the_sigmoid_not_the_logit() -> None:
    logits = torch.tensor([[[[-0.5, 0.0, 0.4, 2.0]]]])  # sigmoid: 0.38, 0.5, 0.60, 0.88
    assert predict_classes(logits, 0.5).tolist() == [[[0, 1, 1, 1]]]
    assert predict_classes(logits, 0.7).tolist() == [[[0, 0, 0, 1]]]
    assert predict_classes(torch.tensor([[[[0.1]], [[2.0]], [[0.3]]]]), 0.5).tolist() == [[[1]]]


def make_checkpoint() -> Checkpoint:
    spec = ModelSpec("bilinear", 1, 1, 4, 2)
    return Checkpoint(
        build_network(spec).state_dict(), spec, PercentileNormalizer(1, 99), ["bg", "fg"], 0.4, 3, {"dice": 0.5}
    )


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint(make_checkpoint(), path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "unetseg-checkpoint" and raw["model"]["base_channels"] == 4
    loaded = load_checkpoint(path)
    assert loaded.model == make_checkpoint().model and loaded.threshold == 0.4
    predictor = Predictor(loaded, choose_fast_path(torch.device("cpu"), "auto", True))
    assert predictor.predict(np.zeros((1, 13, 17), np.uint8)).shape == (13, 17)


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint(make_checkpoint(), path)
    before = path.read_bytes()

    def crash(obj: object, handle: object) -> None:
        handle.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(make_checkpoint(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary file left behind


def test_foreign_files_are_not_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    for name in ("x.pt", "other.pt"):
        with pytest.raises(UserError, match="is not a unetseg checkpoint"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_several_classes_predict_by_argmax() -> None:
    spec = ModelSpec("bilinear", 1, 3, 4, 2)
    model = build_network(spec)
    with torch.no_grad():  # make the 1×1 output layer prefer class 2 everywhere
        model.outc.weight.zero_()
        model.outc.bias.copy_(torch.tensor([0.0, 1.0, 5.0]))
    checkpoint = Checkpoint(model.state_dict(), spec, PercentileNormalizer(1, 99), ["a", "b", "c"], 0.5, 1, {})
    predictor = Predictor(checkpoint, choose_fast_path(torch.device("cpu"), "auto", True))
    classes = predictor.predict(np.random.default_rng(0).integers(0, 255, (1, 9, 11)).astype(np.uint8))
    assert classes.shape == (9, 11) and set(np.unique(classes)) == {2}


def test_one_finder_takes_the_newest_under_runs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    for index, run in enumerate(("old", "new", "sweep/0")):
        path = runs / run / "checkpoints" / "last.pt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, ns=(10**18 + index, 10**18 + index))
    assert find_checkpoint(None, "runs", "last.pt") == runs / "sweep" / "0" / "checkpoints" / "last.pt"
    assert find_checkpoint(None, "runs", "last.pt", exclude=runs / "sweep") == runs / "new" / "checkpoints" / "last.pt"
    assert find_checkpoint("runs/old/checkpoints/last.pt", "elsewhere") == runs / "old" / "checkpoints" / "last.pt"
    with pytest.raises(UserError, match="no training run with checkpoints/best.pt under"):
        find_checkpoint(None, "runs")


def test_a_model_spec_that_cannot_be_built_is_one_line(tmp_path: Path) -> None:
    raw = make_checkpoint().to_dict()
    raw["model"]["upsampling"] = "nearest"
    torch.save(raw, tmp_path / "odd.pt")
    with pytest.raises(UserError, match="describes a network this unetseg cannot build"):
        load_checkpoint(tmp_path / "odd.pt")
