"""The planner's rules: from the data's fingerprint, the device and a time budget to settings, each with its
reason. The rules, in order (docs/training.md lists them with the figures behind them):

- depth: the smallest of 3, 4, 5 whose receptive field (13·2^depth − 8 px for this U-Net) covers twice the
  90th-percentile object diameter (an object and as much context); 4 when the labels show no objects;
- patch: 256 px on a CPU, 512 on a GPU, at most the smallest image side (a multiple of 2^depth);
- batch: 8 patches of 256² (16 of 512² on a GPU), more of smaller patches (the same pixels per step, ≤ 32);
- width: the widest of 16, 32, 64 (32, 64 on a GPU) that makes at least MIN_STEPS steps in the budget, timed
  here; else the narrowest;
- steps: as many as the budget holds (epochs of about 1% of it, re-planned as training goes: trainer.time_budget);
- Adam with a poly schedule, lr 2e-3 (1e-3 for the 64-wide net);
- loss: BCE + Dice; with the U-Net paper's border weights (no class balancing) when objects are separated by
  thin borders (half the background or more within 3 px of an object);
- augmentation: elastic 0.5 and intensity changes below 30 images, 0.25 below 200, intensity only above;
- validation: the last 10% as one block (at least one image); best by the Dice of the rarer class, smoothed
  (EMA 0.9) when there are many epochs; for one-output networks the decision threshold chosen on it after
  training (trainer.threshold=auto).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from rich.table import Table

from unetseg.planning.fingerprint import DataFingerprint
from unetseg.training.budget import readable

# experiment=isbi's 16-wide net reaches its figures in 2,400 steps of 8 patches of 256². On ISBI slices 0-19
# (docs/isbi.md) the planned 32-wide net's 730 steps in 20 minutes scored no better than the 16-wide net's 1,140 in
# 10 (membrane Dice 0.817 against 0.822) at 3.2 times the time per step: width waits for this many steps.
MIN_STEPS = 2000
WIDTHS_CPU, WIDTHS_GPU = (16, 32, 64), (32, 64)
TRAINING_SHARE = 0.9  # of the budget for the steps; the rest for validation, checkpoints and the report
DEFAULT_BUDGET = 20 * 60.0


def receptive_field(depth: int) -> int:
    """Pixels one output of this U-Net sees (3×3 convolutions, 2×2 pooling): 96, 200 and 408 for depth 3-5."""
    return 13 * 2**depth - 8


@dataclass
class Choice:
    key: str  # a dotted config key
    value: Any
    reason: str


@dataclass
class Plan:
    fingerprint: DataFingerprint
    device: str
    budget_s: float
    step_times: dict[int, float] = field(default_factory=dict)  # width → seconds per step, measured
    choices: list[Choice] = field(default_factory=list)
    given: dict[str, Any] = field(default_factory=dict)  # values the command line set: the rest is planned around them

    def choose(self, key: str, value: Any, reason: str) -> Any:
        """Record the planned ``value``; return the one the rules go on with (the command line's, where given)."""
        self.choices.append(Choice(key, value, reason))
        return self.given.get(key, value)

    def values(self) -> dict[str, Any]:
        return {c.key: c.value for c in self.choices}

    def table(self, kept: set[str] | None = None) -> Table:
        """The plan as printed: setting, value, reason; ``kept``: keys the command line set, which win."""
        table = Table(title="plan", title_justify="left", show_lines=False)
        for header in ("setting", "value", "why"):
            table.add_column(header, overflow="fold")
        for choice in self.choices:
            value = f"{choice.value}"
            if kept and choice.key in kept:
                same = choice.key in self.given and self.given[choice.key] == choice.value
                value = "yours" if same else f"yours (planned {value})"
            table.add_row(choice.key, value, choice.reason)
        return table

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint.to_dict(),
            "device": self.device,
            "budget_s": self.budget_s,
            "step_seconds": {str(w): round(s, 4) for w, s in self.step_times.items()},
            "settings": {c.key: c.value for c in self.choices},
            "reasons": {c.key: c.reason for c in self.choices},
        }

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.to_dict()))


def describe_fingerprint(plan: Plan) -> str:
    """The data and the machine the plan is for, in one line."""
    f = plan.fingerprint
    d = f.to_dict()
    objects = (
        f"objects {f.object_diameters['median']:.0f} px across (median; p90 {f.object_diameters['p90']:.0f}), "
        f"{f.objects_per_image:.0f} per image, {f.thin_background:.0%} of the background within 3 px of one"
    )
    fractions = ", ".join(f"{fraction:.0%}" for fraction in f.class_fractions)
    return (
        f"[bold]plan for[/]: {f.images} images of {d['size']}, {f.bits}-bit, {f.channels} channel(s); classes "
        f"{fractions}; {objects} · [bold]on[/]: {plan.device} · [bold]budget[/]: {readable(plan.budget_s)}"
    )


# time_step(width, depth, patch, batch) → seconds per step on this machine
StepTimer = Callable[[int, int, int, int], float]


def make_plan(
    data: DataFingerprint,
    device: str,
    on_gpu: bool,
    budget_s: float | None,
    class_names: list[str],
    time_step: StepTimer,
    binary: bool = True,
    given: dict[str, Any] | None = None,
) -> Plan:
    """The plan for ``data`` on this device within ``budget_s`` (None: 20 minutes); ``binary``: a network with one
    foreground output (model.num_classes=1), whose decision threshold the plan has chosen after training;
    ``given``: settings the command line fixed, which the later rules build on (a given width is the one timed)."""
    plan = Plan(data, device, budget_s or DEFAULT_BUDGET, given=dict(given or {}))
    if budget_s is None:
        plan.choose("trainer.time_budget", "20m", "no trainer.time_budget given: plan for 20 minutes")
    p90 = data.object_diameters.get("p90", 0.0)
    if p90 > 0:
        depth = next((d for d in (3, 4, 5) if receptive_field(d) >= 2 * p90), 5)
        why = f"receptive field {receptive_field(depth)} px ≥ 2 × the 90th-percentile object diameter ({p90:.0f} px)"
    else:
        depth, why = 4, "no objects in the labels: the classic depth"
    side = data.smallest_side
    target = 512 if on_gpu else 256
    patch = min(target, side // 2**depth * 2**depth)
    while depth > 3 and patch < 2**depth * 8:  # the deepest layer must keep a few pixels
        depth -= 1
        patch = min(target, side // 2**depth * 2**depth)
    depth = plan.choose("model.depth", depth, why)
    if patch < target:
        why = f"the smallest image side is {side} px: whole images (a multiple of 2^depth = {2**depth})"
    else:
        why = f"{target}² crops on a {'GPU' if on_gpu else 'CPU'}: varied samples at a step cost that fits"
    patch = plan.choose("data.patch_size", patch, why)
    base_batch = 16 if on_gpu else 8
    batch = min(32, max(base_batch, round(base_batch * (target / patch) ** 2)))
    batch = plan.choose("trainer.batch_size", batch, f"{batch} patches of {patch}² per step")

    train_s = plan.budget_s * TRAINING_SHARE
    widths = WIDTHS_GPU if on_gpu else WIDTHS_CPU
    if "model.base_channels" in plan.given:  # time the width that will train, and only that one
        widths = (int(plan.given["model.base_channels"]),)
    chosen = widths[0]
    for width in widths:
        plan.step_times[width] = time_step(width, depth, patch, batch)
        if train_s / plan.step_times[width] < MIN_STEPS:
            break
        chosen = width
    steps = int(train_s / plan.step_times[chosen])
    timed = ", ".join(f"{w}-wide {s:.2f} s" for w, s in plan.step_times.items())
    if "model.base_channels" in plan.given:
        why = f"step timed here ({timed}): about {steps:,} steps in {readable(train_s)} of training"
    elif steps >= MIN_STEPS:
        why = f"steps timed here ({timed}): the widest with ≥ {MIN_STEPS:,} steps in {readable(train_s)} of training"
    else:
        why = f"steps timed here ({timed}): no width reaches {MIN_STEPS:,} steps in {readable(train_s)}; the narrowest"
    plan.choose("model.base_channels", chosen, why)
    per_epoch = min(200, max(10, round(0.01 * plan.budget_s / plan.step_times[chosen])))
    plan.choose("data.samples_per_epoch", per_epoch * batch, f"{per_epoch} steps per epoch: about 1% of the budget")
    epochs = max(1, steps // per_epoch)
    plan.choose(
        "trainer.epochs",
        epochs,
        f"first guess: about {steps:,} steps in {readable(train_s)}; planned again after every epoch",
    )
    plan.choose("optim.name", "adam", "Adam with a poly schedule: no tuning of a learning rate decay")
    plan.choose("optim.lr", 1e-3 if chosen >= 64 else 2e-3, "the rate experiment=isbi found for narrow nets")
    plan.choose("schedule.name", "poly", "decays to 0 at the end of the budget")

    borders = data.thin_background >= 0.5
    plan.choose(
        "trainer.loss",
        "weighted_bce_dice" if borders else "bce_dice",
        f"objects are separated by thin borders ({data.thin_background:.0%} of the background within 3 px of an "
        "object): the U-Net paper's border weights, plus Dice"
        if borders
        else f"objects are apart ({data.thin_background:.0%} of the background within 3 px of one): BCE + Dice",
    )
    if borders:
        plan.choose("trainer.class_balance", False, "the Dice term already balances the classes")

    images = data.images
    elastic, intensity = (0.5, 0.2) if images < 30 else (0.25, 0.1) if images < 200 else (0.0, 0.1)
    why = f"{images} images: {'strong' if images < 30 else 'some' if images < 200 else 'light'} augmentation"
    plan.choose("data.augment.elastic", elastic, why)
    for name in ("brightness", "contrast", "gamma"):
        plan.choose(f"data.augment.{name}", intensity, why)
    for name in ("noise", "blur"):
        plan.choose(f"data.augment.{name}", round(intensity / 2, 3), why)

    validation = max(0.1, 1 / images) if images >= 2 else 0.5
    plan.choose(
        "data.val_fraction",
        round(min(0.5, validation), 3),
        f"the last {max(1, round(images * min(0.5, validation)))} of {images} images, one block",
    )
    fractions = data.class_fractions[: len(class_names)]
    if len(class_names) == 2 and len(fractions) == 2:
        rare = class_names[int(fractions[1] < fractions[0])]
        share = min(fractions)
        plan.choose("trainer.monitor", f"dice_{rare}", f"the rarer class ({share:.0%} of the labelled pixels)")
    else:
        plan.choose("trainer.monitor", "dice", "the mean Dice over the classes")
    if binary:
        plan.choose(
            "trainer.threshold",
            "auto",
            "chosen after training on the validation images, by the monitored score (stored in best.pt)",
        )
    plan.choose(
        "trainer.monitor_ema",
        0.9 if epochs >= 20 else 0.0,
        "smoothed over epochs: one lucky epoch does not pick the model" if epochs >= 20 else "few epochs: unsmoothed",
    )
    return plan
