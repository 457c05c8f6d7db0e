"""The accuracy recipe's parts: border weights, losses, optimisers, schedules, the monitor, early stopping
and exact resume (the last three through the real CLI)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import TINY, assert_one_line_error, run_cli
from unetseg.config import LossName, OptimConfig, OptimizerName, ScheduleConfig, ScheduleName, register_schemas
from unetseg.runner import preflight
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import register_resolvers
from unetseg.training.border_weights import border_weight_map, class_balance, two_nearest_distances
from unetseg.training.losses import compute_loss
from unetseg.training.monitor import Monitor
from unetseg.training.optimizers import build_optimizer
from unetseg.training.schedules import Horizon, build_schedule
from unetseg.training.weight_average import WeightAverage


def test_border_weight_map_follows_the_unet_formula() -> None:
    label = np.zeros((20, 40), np.uint8)
    label[5:15, 0:10] = 1  # two cells two pixels apart (columns 10 and 11 are the border between them)
    label[5:15, 12:22] = 1
    label[5:15, 30:38] = 1  # a third cell, far away
    weights = border_weight_map(label, 1, w0=10.0, sigma=5.0)
    balance = class_balance(label, 2)
    # column 10: 1 px to the left cell, 2 px to the right one: w = w_c + 10·exp(-(1 + 2)² / 50)
    assert weights[10, 10] == pytest.approx(balance[10, 10] + 10 * math.exp(-9 / 50), rel=1e-4)
    assert np.array_equal(weights[label == 1], balance[label == 1])  # no border term inside cells
    assert weights[10, 10] > weights[0, 26] > balance[0, 26]  # a tight border outweighs open background
    # class balance: each present class carries the same total weight
    assert balance[label == 0].sum() == pytest.approx(balance[label == 1].sum())
    unbalanced = border_weight_map(label, 1, w0=10.0, sigma=5.0, balance_classes=False)
    assert unbalanced[10, 10] == pytest.approx(1 + 10 * math.exp(-9 / 50), rel=1e-4) and unbalanced[8, 5] == 1


def test_border_distances_are_exact_and_the_same_every_call() -> None:
    # OpenCV 5's precise distance transform varies in the last bit from call to call; the weight map
    # must not, or two runs of the same training drift apart.
    rng = np.random.default_rng(0)
    label = (cv2.GaussianBlur(rng.random((48, 48)).astype(np.float32), (0, 0), 2) > 0.5).astype(np.uint8)
    d1, d2 = two_nearest_distances(label > 0, reach=30.0)
    finite = np.isfinite(d2)
    squares = np.square(d2[finite], dtype=np.float64).round()  # squared Euclidean distances are whole numbers
    assert finite.any() and np.array_equal(np.sqrt(squares).astype(np.float32), d2[finite])
    first = border_weight_map(label, 1, w0=10.0, sigma=5.0)
    for _ in range(100):
        junk = np.empty(int(rng.integers(1, 10_000)))  # move the heap around between calls
        assert np.array_equal(border_weight_map(label, 1, w0=10.0, sigma=5.0), first)
        del junk


def test_weighted_bce_weights_pixels() -> None:
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 8, 8) > 0.5).long()
    ones = torch.ones(2, 8, 8)
    plain = compute_loss(LossName.bce, logits, target)
    assert compute_loss(LossName.weighted_bce, logits, target, ones) == pytest.approx(plain.item())
    assert compute_loss(LossName.weighted_bce, logits, target, 3 * ones) == pytest.approx(3 * plain.item())
    assert compute_loss(LossName.weighted_bce, logits, target, None) == pytest.approx(plain.item())  # validation


def schedule_config(name: str, **values: float) -> ScheduleConfig:
    base = {"exponent": 0.9, "min_lr": 0.0, "pct_start": 0.3, "patience": 1, "factor": 0.5}
    return ScheduleConfig(name=ScheduleName(name), **{**base, **values})


def lrs(name: str, steps: int, **values: float) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = build_schedule(optimizer, schedule_config(name, **values), Horizon(steps), lower_is_better=True)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.after_step()
    return seen


def test_schedules_have_their_shapes() -> None:
    assert lrs("constant", 10) == [0.1] * 10
    poly = lrs("poly", 10)
    assert poly[0] == pytest.approx(0.1) and poly[5] == pytest.approx(0.1 * 0.5**0.9)
    cosine = lrs("cosine", 10, min_lr=0.01)
    assert cosine[0] == pytest.approx(0.1) and cosine[5] == pytest.approx(0.055) and min(cosine) > 0.01
    onecycle = lrs("onecycle", 20)
    assert onecycle[0] < 0.01 and max(onecycle) == pytest.approx(0.1, rel=0.05) and onecycle[-1] < 0.01
    assert 4 <= int(np.argmax(onecycle)) <= 7  # the peak at pct_start = 0.3 of the steps


def test_plateau_schedule_and_state_round_trip() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = build_schedule(optimizer, schedule_config("plateau"), Horizon(100), lower_is_better=True)
    for value in (1.0, 1.0, 1.0):  # no improvement for longer than patience = 1
        schedule.after_validation(value)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    poly_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    poly = build_schedule(poly_optimizer, schedule_config("poly"), Horizon(10), lower_is_better=True)
    for _ in range(4):
        poly_optimizer.step()
        poly.after_step()
    state = poly.state_dict()
    fresh_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    fresh = build_schedule(fresh_optimizer, schedule_config("poly"), Horizon(10), lower_is_better=True)
    fresh.load_state_dict(state)
    fresh_optimizer.load_state_dict(poly_optimizer.state_dict())
    for optimizer_, schedule_ in ((poly_optimizer, poly), (fresh_optimizer, fresh)):
        optimizer_.step()
        schedule_.after_step()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(poly_optimizer.param_groups[0]["lr"])


def test_monitor_direction_ema_and_patience() -> None:
    dice = Monitor("dice", ema=0.0)
    assert dice.update({"dice": 0.5}, 1) and dice.update({"dice": 0.6}, 2) and not dice.update({"dice": 0.55}, 3)
    assert dice.best_epoch == 2 and dice.epochs_since_best == 1 and dice.should_stop(1) and not dice.should_stop(None)
    rand = Monitor("rand_error", ema=0.0)
    assert rand.update({"rand_error": 0.3}, 1) and rand.update({"rand_error": 0.2}, 2)
    assert not rand.update({"rand_error": math.nan}, 3)  # undefined scores never win
    smoothed = Monitor("dice", ema=0.9)
    smoothed.update({"dice": 0.5}, 1)
    assert not smoothed.update({"dice": 0.4}, 2) and smoothed.smoothed == pytest.approx(0.49)
    assert smoothed.update({"dice": 0.9}, 3) and smoothed.smoothed == pytest.approx(0.531)  # one spike counts 10%
    assert Monitor.from_state(smoothed.state_dict()) == smoothed


# ---- end to end ---------------------------------------------------------------------------------------

RECIPE = [
    *TINY,
    "trainer.precision=fp32",
    "optim=adam",
    "optim.lr=0.003",
    "data.augment.elastic=0.5",
    "data.augment.noise=0.5",
    "data.patch_size=32",
]


def train(cwd: Path, data: Path, *extra: str) -> Path:
    """Train in ``cwd`` (one thread: these tiny nets gain nothing from two) and return the new run directory."""
    before = set((cwd / "outputs" / "train").glob("*")) if (cwd / "outputs" / "train").is_dir() else set()
    one_thread = {"OMP_NUM_THREADS": "1"}
    result = run_cli("train", "data=folder", f"data.root={data}", *RECIPE, *extra, cwd=cwd, env=one_thread)
    assert result.returncode == 0, result.stderr
    (run_dir,) = set((cwd / "outputs" / "train").glob("*")) - before
    return run_dir


def epochs(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path: Path, dataset: Path) -> None:
    # with the weights' moving average: the checkpoints hold the average, the training state the weights that train
    recipe = ("trainer.loss=weighted_bce_dice", "trainer.weight_ema=0.9")
    straight = train(tmp_path, dataset, "trainer.epochs=3", *recipe)
    first = train(tmp_path, dataset, "trainer.epochs=2", *recipe)
    resumed = train(tmp_path, dataset, "trainer.epochs=3", *recipe, "trainer.resume=auto")
    assert [e["epoch"] for e in epochs(resumed)] == [1, 2, 3]  # the earlier epochs are carried over
    assert epochs(resumed)[:2] == epochs(first)
    assert epochs(resumed)[2] | {"epoch_time_s": 0} == epochs(straight)[2] | {"epoch_time_s": 0}
    final, expected = weights(resumed / "checkpoints" / "last.pt"), weights(straight / "checkpoints" / "last.pt")
    for name in expected:  # bit for bit: model, optimiser, schedule and augmentation all continue exactly
        assert torch.equal(final[name], expected[name]), name
    trained = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)["training_state"]
    expected_trained = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)["training_state"]
    assert trained["weight_updates"] == expected_trained["weight_updates"] > 0
    assert all(torch.equal(trained["weights"][name], expected_trained["weights"][name]) for name in expected)
    assert not all(torch.equal(trained["weights"][name], final[name]) for name in expected)  # the average differs
    assert (resumed / "checkpoints" / "best.pt").is_file()


@pytest.mark.slow
def test_resume_refuses_what_it_cannot_continue(tmp_path: Path, dataset: Path) -> None:
    run_dir = train(tmp_path, dataset, "trainer.epochs=1")
    args = ["train", "data=folder", f"data.root={dataset}", *RECIPE]
    best = run_cli(*args, f"trainer.resume={run_dir / 'checkpoints' / 'best.pt'}", "trainer.epochs=2", cwd=tmp_path)
    assert_one_line_error(best, "no training state", "last.pt")
    done = run_cli(*args, f"trainer.resume={run_dir / 'checkpoints' / 'last.pt'}", "trainer.epochs=1", cwd=tmp_path)
    assert_one_line_error(done, "already trained 1", "trainer.epochs")
    other = run_cli(*args, "trainer.resume=auto", "trainer.epochs=2", "model.base_channels=8", cwd=tmp_path)
    assert_one_line_error(other, "is an unfinished run of this experiment", "model.base_channels=4 there, 8 here")
    elsewhere = run_cli(*args, "trainer.resume=auto", "trainer.epochs=2", "runs_root=elsewhere", cwd=tmp_path)
    assert_one_line_error(elsewhere, f"no training run with checkpoints/last.pt under {tmp_path / 'elsewhere'}")


@pytest.mark.slow
def test_early_stopping_and_monitor(tmp_path: Path, dataset: Path) -> None:
    stuck = train(tmp_path, dataset, "trainer.epochs=6", "optim.lr=1e-12", "trainer.early_stopping=2")
    summary = json.loads((stuck / "metrics.json").read_text())
    assert summary["stopped_early"] and summary["epochs"] == 3 and summary["best_epoch"] == 1
    by_rand = train(tmp_path, dataset, "trainer.epochs=3", "trainer.monitor=rand_error")
    history = epochs(by_rand)
    summary = json.loads((by_rand / "metrics.json").read_text())
    assert summary["best_epoch"] == min(history, key=lambda e: e["rand_error"])["epoch"]
    assert summary["monitor"] == "rand_error"


@pytest.mark.slow
def test_bad_recipe_settings_are_one_line(tmp_path: Path, dataset: Path) -> None:
    args = ["train", "data=folder", f"data.root={dataset}", *TINY]
    assert_one_line_error(run_cli(*args, "trainer.monitor=accuracy", cwd=tmp_path), "trainer.monitor=accuracy")
    # The rest through the same check the CLI runs first (the runner's preflight), without a process each.
    register_resolvers()
    register_schemas()
    for override, fragment in (
        ("data.augment.elastic=1.5", "data.augment.elastic=1.5"),
        ("data.patch_size=2", "data.patch_size=2"),
        ("trainer.monitor_ema=1", "trainer.monitor_ema=1"),
        ("trainer.weight_ema=-0.5", "trainer.weight_ema=-0.5"),
        ("schedule=cyclic", "schedule"),
    ):
        with pytest.raises(UserError, match=re.escape(fragment)):
            preflight("train", args[1:] + [override], multirun=False)


@pytest.mark.parametrize("loss", list(LossName))
def test_losses_are_low_for_confident_correct_logits(loss: LossName) -> None:
    target = torch.tensor([[[0, 1], [1, 0]]])
    good = (target.float() * 20 - 10)[:, None]
    assert compute_loss(loss, good, target) < 0.01
    assert compute_loss(loss, -good, target) > 0.4


def test_the_weight_average_ramps_up_and_follows_the_batchnorm_statistics() -> None:
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    average = WeightAverage(network, decay=0.9)
    first = network[0].weight.detach().clone()
    for step in range(1, 201):
        network(torch.rand(2, 1, 8, 8))  # BatchNorm's running statistics move
        with torch.no_grad():
            network[0].weight.add_(1.0)
        average.update(network)
        if step == 1:  # the first update copies the weights: the random start leaves no trace
            assert torch.equal(average.module[0].weight, first + 1.0)
        if step == 2:  # then the decay ramps up from 2/11
            assert torch.allclose(average.module[0].weight, first + 1.0 + 9 / 11)
    assert average.updates == 200
    # weights rising by 1 per step: the average lags by decay / (1 − decay) = 9 steps once the ramp is over
    lag = (network[0].weight - average.module[0].weight).mean().item()
    assert 8.9 < lag < 9.0
    assert not torch.equal(average.module[1].running_mean, torch.zeros(2))
    assert torch.equal(average.module[1].num_batches_tracked, network[1].num_batches_tracked)


def test_optimiser_settings_reach_torch() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    cfg = OptimConfig(
        name=OptimizerName.rmsprop, lr=1e-5, weight_decay=1e-8, momentum=0.9, betas=[0.9, 0.999], nesterov=False
    )
    optimizer = build_optimizer(params, cfg)
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert optimizer.defaults["lr"] == 1e-5 and optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["weight_decay"] == 1e-8
