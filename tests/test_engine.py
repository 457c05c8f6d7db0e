"""Metrics against hand-computed values, losses, checkpoints (atomic, weights_only), the optimiser."""

from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg.config import LossName, OptimConfig, OptimizerName
from unetseg.data.normalize import PercentileNormalizer
from unetseg.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from unetseg.engine.losses import compute_loss
from unetseg.engine.metrics import ConfusionMatrix, predict_classes
from unetseg.engine.optim import build_optimizer
from unetseg.engine.precision import choose_fast_path
from unetseg.engine.predictor import Predictor
from unetseg.errors import UserError
from unetseg.model import ModelSpec


def test_dice_iou_accuracy_match_hand_computation() -> None:
    truth = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0]]])
    predicted = torch.tensor([[[1, 0, 0, 0], [1, 1, 1, 0]]])
    matrix = ConfusionMatrix(2)
    matrix.update(predicted, truth)
    scores = matrix.scores(["membrane", "cell"])
    # cell: TP 3, FP 1, FN 1 → Dice 6/8, IoU 3/5; membrane: TP 3, FP 1, FN 1 → the same
    assert scores["dice_cell"] == pytest.approx(0.75)
    assert scores["iou_cell"] == pytest.approx(0.6)
    assert scores["dice_membrane"] == pytest.approx(0.75)
    assert scores["pixel_error"] == pytest.approx(2 / 8)
    assert scores["dice"] == pytest.approx(0.75)


def test_metrics_accumulate_over_images_and_absent_class_scores_one() -> None:
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    matrix.update(torch.tensor([[1, 1]]), torch.tensor([[1, 0]]))
    scores = matrix.scores(["a", "b", "c"])
    assert scores["dice_a"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))
    assert scores["dice_b"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    assert scores["dice_c"] == 1.0


def test_threshold_applies_to_the_sigmoid_not_the_logit() -> None:
    logits = torch.tensor([[[[-0.5, 0.0, 0.4, 2.0]]]])  # sigmoid: 0.38, 0.5, 0.60, 0.88
    assert predict_classes(logits, 0.5).tolist() == [[[0, 1, 1, 1]]]
    assert predict_classes(logits, 0.7).tolist() == [[[0, 0, 0, 1]]]
    assert predict_classes(torch.tensor([[[[0.1]], [[2.0]], [[0.3]]]]), 0.5).tolist() == [[[1]]]


@pytest.mark.parametrize("loss", list(LossName))
def test_losses_are_low_for_confident_correct_logits(loss: LossName) -> None:
    target = torch.tensor([[[0, 1], [1, 0]]])
    good = (target.float() * 20 - 10)[:, None]
    assert compute_loss(loss, good, target) < 0.01
    assert compute_loss(loss, -good, target) > 0.4


def test_optimiser_settings_reach_torch() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    cfg = OptimConfig(
        name=OptimizerName.rmsprop, lr=1e-5, weight_decay=1e-8, momentum=0.9, betas=[0.9, 0.999], nesterov=False
    )
    optimizer = build_optimizer(params, cfg)
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert optimizer.defaults["lr"] == 1e-5 and optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["weight_decay"] == 1e-8


def make_checkpoint() -> Checkpoint:
    spec = ModelSpec("bilinear", 1, 1, 4, 2)
    return Checkpoint(spec.build().state_dict(), spec, PercentileNormalizer(1, 99), ["bg", "fg"], 0.4, 3, {"dice": 0.5})


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
    model = spec.build()
    with torch.no_grad():  # make the 1×1 output layer prefer class 2 everywhere
        model.outc.weight.zero_()
        model.outc.bias.copy_(torch.tensor([0.0, 1.0, 5.0]))
    checkpoint = Checkpoint(model.state_dict(), spec, PercentileNormalizer(1, 99), ["a", "b", "c"], 0.5, 1, {})
    predictor = Predictor(checkpoint, choose_fast_path(torch.device("cpu"), "auto", True))
    classes = predictor.predict(np.random.default_rng(0).integers(0, 255, (1, 9, 11)).astype(np.uint8))
    assert classes.shape == (9, 11) and set(np.unique(classes)) == {2}
