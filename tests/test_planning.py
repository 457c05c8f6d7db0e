"""experiment=auto and trainer.time_budget: the planner's rules on three kinds of data, the plan merged under the
command line, the budget's arithmetic and schedules, and real runs that keep to their budget."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import assert_one_line_error, run_cli, write_dataset
from unetseg.config import ScheduleConfig, ScheduleName
from unetseg.planning.apply import given_keys, is_given
from unetseg.planning.fingerprint import DataFingerprint, fingerprint_pairs
from unetseg.planning.rules import MIN_STEPS, make_plan, receptive_field
from unetseg.training.budget import TimeBudget, duration_seconds, readable
from unetseg.training.schedules import Horizon, build_schedule, one_cycle_factor


def fingerprint(images: int, side: int, bits: int, p90: float, thin: float, fractions: list[float]) -> DataFingerprint:
    return DataFingerprint(
        images=images,
        heights=[side] * images,
        widths=[side] * images,
        channels=1,
        bits=bits,
        intensity_percentiles={"p1": 0.0, "p50": 100.0, "p99": 200.0},
        class_fractions=fractions,
        object_diameters={"median": p90 / 2, "p90": p90},
        objects_per_image=10,
        thin_background=thin,
    )


def timer(seconds: dict[int, float]):  # noqa: ANN201 - the planner's StepTimer
    calls = []

    def time_step(width: int, depth: int, patch: int, batch: int) -> float:
        calls.append((width, depth, patch, batch))
        return seconds[width]

    time_step.calls = calls  # type: ignore[attr-defined]
    return time_step


def test_tiny_images_are_trained_whole_in_big_batches_with_the_widest_net_that_fits() -> None:
    data = fingerprint(40, 64, 8, p90=10, thin=0.2, fractions=[0.7, 0.3])
    time_step = timer({16: 0.05, 32: 0.15, 64: 0.5})
    plan = make_plan(data, "cpu", False, None, ["background", "foreground"], time_step).values()  # 20m by default
    assert plan["model.depth"] == 3  # receptive field 96 px ≥ 2 × 10 px
    assert plan["data.patch_size"] == 64 and plan["trainer.batch_size"] == 32  # whole images, the pixels of 8×256²
    assert plan["model.base_channels"] == 64  # 1,080 s / 0.5 s = 2,160 steps ≥ 2,000
    assert plan["trainer.loss"] == "bce_dice" and "trainer.class_balance" not in plan
    assert plan["data.augment.elastic"] == 0.25 and plan["data.augment.brightness"] == 0.1  # 40 images: some
    assert plan["trainer.monitor"] == "dice_foreground" and plan["trainer.time_budget"] == "20m"
    assert {call[2:] for call in time_step.calls} == {(64, 32)}


def test_em_slices_get_the_isbi_recipe() -> None:
    data = fingerprint(20, 512, 8, p90=80, thin=0.8, fractions=[0.22, 0.78])
    time_step = timer({16: 0.45, 32: 1.4, 64: 5.0})
    plan = make_plan(data, "cpu", False, 20 * 60, ["membrane", "cell"], time_step).values()
    assert plan["model.depth"] == 4 and receptive_field(4) == 200  # ≥ 2 × 80 px; depth 3 sees 96
    # 16 wide: 1,080 s / 0.45 s = 2,400 steps ≥ 2,000; 32 wide: 771
    assert (plan["data.patch_size"], plan["trainer.batch_size"], plan["model.base_channels"]) == (256, 8, 16)
    assert [call[0] for call in time_step.calls] == [16, 32]  # 64 is not timed once 32 falls short
    assert plan["trainer.loss"] == "weighted_bce_dice" and plan["trainer.class_balance"] is False  # thin borders
    assert plan["data.augment.elastic"] == 0.5 and plan["data.augment.noise"] == 0.1  # 20 images: strong
    assert plan["trainer.monitor"] == "dice_membrane" and plan["trainer.monitor_ema"] == 0.9
    assert plan["data.val_fraction"] == 0.1 and plan["optim.lr"] == 2e-3 and plan["schedule.name"] == "poly"
    assert plan["trainer.threshold"] == "auto"  # chosen on the validation images after training
    assert plan["data.samples_per_epoch"] == 27 * 8  # 1% of 1,200 s at 0.45 s per step
    assert plan["trainer.epochs"] == 2400 // 27  # the first guess: 2,400 steps in 18 minutes
    hour = make_plan(data, "cpu", False, 60 * 60, ["membrane", "cell"], timer({16: 0.45, 32: 1.4, 64: 5.0})).values()
    assert hour["model.base_channels"] == 32  # 3,240 s / 1.4 s = 2,314 steps


def test_large_16_bit_images_get_a_deep_net_and_the_narrowest_width_when_none_reaches_enough_steps() -> None:
    data = fingerprint(300, 2048, 16, p90=150, thin=0.1, fractions=[0.9, 0.1])
    plan = make_plan(data, "cpu", False, 20 * 60, ["background", "nucleus"], timer({16: 0.9, 32: 2.5})).values()
    assert plan["model.depth"] == 5  # 408 px ≥ 300; depth 4 sees 200
    assert plan["data.patch_size"] == 256 and plan["model.base_channels"] == 16  # 1,200 steps < 2,000: narrowest
    assert plan["data.val_fraction"] == 0.1  # 30 of 300 images
    assert plan["data.augment.elastic"] == 0.0 and plan["trainer.monitor"] == "dice_nucleus"
    gpu = make_plan(data, "cuda", True, 60 * 60, ["background", "nucleus"], timer({32: 0.2, 64: 0.6})).values()
    assert (gpu["data.patch_size"], gpu["trainer.batch_size"], gpu["model.base_channels"]) == (512, 16, 64)
    assert "trainer.time_budget" not in gpu  # given: the plan does not choose it
    assert MIN_STEPS == 2000


def test_what_the_command_line_gives_is_planned_around() -> None:
    data = fingerprint(20, 512, 8, p90=73, thin=0.79, fractions=[0.23, 0.77])
    time_step = timer({16: 0.5, 32: 1.5, 64: 5.0})
    given = {"model.base_channels": 32, "data.patch_size": 128}
    plan = make_plan(data, "cpu", False, 1200, ["membrane", "cell"], time_step, given=given)
    assert time_step.calls == [(32, 4, 128, 32)]  # only the given width, at the given patch (and the batch for it)
    values = plan.values()
    assert values["model.base_channels"] == 32 and values["data.patch_size"] == 256  # planned: 256; given: 128
    assert values["trainer.batch_size"] == 32  # the pixels of 8 × 256²
    # 1,080 s / 1.5 s = 720 steps, in epochs of at least 10 steps
    assert values["data.samples_per_epoch"] == 10 * 32 and values["trainer.epochs"] == 720 // 10
    assert "yours (planned 256)" in _text(plan.table({"data.patch_size", "model.base_channels"}))


def _text(table: object) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_a_fingerprint_sees_objects_and_thin_borders() -> None:
    from unetseg.data.decoding import decoded
    from unetseg.data.normalize import PercentileNormalizer

    classes = torch.ones((64, 64), dtype=torch.uint8).numpy()
    classes[:, 31:33] = 0  # two 31-px-wide cells split by a 2-px membrane: all background is a thin border
    pair = decoded("a", classes[None] * 200, PercentileNormalizer(0.5, 99.5), classes, None)
    found = fingerprint_pairs([pair], [(64, 64)], 1)
    assert found.thin_background == 1.0 and found.objects_per_image == 2
    assert found.class_fractions == pytest.approx([2 / 64, 62 / 64]) and found.bits == 8


def test_the_command_line_wins_over_the_plan() -> None:
    given = given_keys(["experiment=auto", "data=folder", "data.root=x", "model.base_channels=32", "optim=sgd"])
    assert is_given("model.base_channels", given) and not is_given("model.depth", given)
    assert is_given("optim.lr", given)  # optim=sgd chose the optimiser and its settings
    assert not is_given("data.patch_size", given)  # data=folder chose the source, not the patch
    assert is_given("data.augment.elastic", given_keys(["data.augment.elastic=0"]))
    assert is_given("data.augment.elastic", given_keys(["data.augment={elastic: 0}"]))


# ---- the budget --------------------------------------------------------------------------------------------


def test_durations() -> None:
    assert [duration_seconds(t) for t in ("20m", "90s", "2h", "1h30m", "45", "1.5h")] == [
        1200,
        90,
        7200,
        5400,
        45,
        5400,
    ]
    assert duration_seconds("soon") is None and duration_seconds("") is None
    assert readable(1234.5) == "20m 34s" and readable(7300) == "2h 01m" and readable(9) == "9s"


def test_the_budget_plans_the_epochs_that_fit_and_keeps_time_for_the_end() -> None:
    budget = TimeBudget(100.0)
    assert budget.epochs_that_fit(0, 5.0, 1.0) == 0  # nothing measured yet
    budget.epoch_costs += [12.0, 10.0, 10.0, 10.0]  # the first was slower: the mean of the last three
    # 100 - 30 spent - (3 + 2.5 × 2) kept for the end = 62 → 6 more epochs of 10 s
    assert budget.epochs_that_fit(3, 30.0, 2.0) == 9
    budget.spent_before = 60.0  # a resumed run: its time counts
    assert budget.epochs_that_fit(3, 30.0, 2.0) == 3


def test_schedules_reach_their_end_wherever_the_horizon_moves() -> None:
    def rates(name: str, moves: dict[int, int]) -> list[float]:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        cfg = OmegaConf.to_object(
            OmegaConf.merge(
                OmegaConf.structured(ScheduleConfig),
                {"name": name, "exponent": 0.9, "min_lr": 0.0, "pct_start": 0.3, "factor": 0.5, "patience": 5},
            )
        )
        horizon = Horizon(100, movable=True)
        schedule = build_schedule(optimizer, cfg, horizon, lower_is_better=False)
        seen = []
        for step in range(60):
            horizon.total = moves.get(step, horizon.total)
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_step()
        return seen

    for name in (ScheduleName.poly, ScheduleName.cosine, ScheduleName.onecycle):
        moved = rates(name.value, {20: 60})  # the budget turns out to hold 60 steps, not 100
        assert moved[-1] < 0.03 * max(moved), name  # at (or next to) its end at step 60
        assert rates(name.value, {})[-1] > 0.1 * max(moved), name  # unmoved, it was mid-way
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=1.0, total_steps=100, pct_start=0.3, cycle_momentum=False
    )
    for step in range(100):  # the movable one-cycle is torch's OneCycleLR while the horizon stays
        assert optimizer.param_groups[0]["lr"] == pytest.approx(one_cycle_factor(step, 100, 0.3), abs=1e-12)
        optimizer.step()
        reference.step()


@pytest.mark.parametrize("budget", ["soon", "0s", "-5m"])
def test_a_bad_budget_is_one_line(tmp_path: Path, budget: str) -> None:
    assert_one_line_error(run_cli("train", f"trainer.time_budget={budget}", cwd=tmp_path), "trainer.time_budget=")


# ---- real runs -------------------------------------------------------------------------------------------

SMALL = ["model.depth=2", "trainer.precision=fp32", "data.synthetic.num_images=8", "data.synthetic.size=64"]


@pytest.mark.slow
def test_a_time_budget_is_kept_on_a_toy_run(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_cli(
        "train", *SMALL, "model.base_channels=4", "trainer.batch_size=2", "trainer.time_budget=12s", "schedule=poly",
        "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    budget = summary["time_budget"]
    assert budget["budget_s"] == 12 and summary["epochs"] > 3  # far more than trainer.epochs' first guess
    assert 0.6 * 12 < budget["spent_s"] <= 12 * 1.1 and wall < 12 * 1.1 + 5, (budget, wall)
    said = " ".join(result.stdout.split())
    assert "time budget 12s:" in said and "in all" in said
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] < 0.2 * lrs[0]  # the poly schedule reached (nearly) its end with the last planned epoch


@pytest.mark.slow
def test_plan_prints_and_experiment_auto_trains_the_plan_keeping_what_the_command_line_says(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=10, size=64)
    shown = run_cli("plan", f"data.root={root}", "trainer.time_budget=15s", "hydra.run.dir=p", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    said = " ".join(shown.stdout.split())
    assert "plan for: 10 images of 64×64" in said and "model.base_channels" in said and "why" in said
    saved = OmegaConf.load(tmp_path / "p" / "plan.yaml")
    assert saved.settings["data.patch_size"] == 64 and saved.step_seconds["16"] > 0  # 15 s: 16 is the only width timed
    trained = run_cli(
        "train", "experiment=auto", f"data.root={root}", "trainer.time_budget=15s", "model.base_channels=4",
        "data.augment.elastic=0", "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    said = " ".join(trained.stdout.split())
    assert "yours (planned 0.5)" in said  # data.augment.elastic=0 wins over the plan (10 images: 0.5)
    assert "U-Net bilinear 4 wide" in said
    plan = OmegaConf.load(tmp_path / "run" / "plan.yaml")
    config = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    # the given width is the one timed, and the epochs are sized for it
    assert list(plan.step_seconds) == ["4"] and plan.settings["model.base_channels"] == 4 and config.plan is True
    assert config.data.augment.elastic == 0
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["time_budget"]["spent_s"] <= 15 * 1.1 and summary["epochs"] >= 2
