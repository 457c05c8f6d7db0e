"""From a training config to its plan and back: plan what the command line left open, and merge the plan into the
config (a value given on the command line always wins: ``experiment=auto model.base_channels=32`` keeps the rest)."""

from __future__ import annotations

from omegaconf import OmegaConf

from unetseg.config import TrainConfig
from unetseg.planning.fingerprint import fingerprint_data
from unetseg.planning.probe import time_steps
from unetseg.planning.rules import Plan, make_plan
from unetseg.runtime.device import resolve_device
from unetseg.runtime.precision import choose_fast_path
from unetseg.tracking.loggers import flatten
from unetseg.training.budget import duration_seconds

# Choosing one of these groups on the command line (optim=sgd) chooses its settings too: the plan keeps out. The
# other groups (data=folder, model=transposed) choose a source or a variant, and the plan still sizes them.
GROUPS_THAT_DECIDE = ("optim", "schedule")


def given_keys(overrides: list[str]) -> set[str]:
    """The dotted keys and config groups that command-line overrides set."""
    return {override.split("=", 1)[0].lstrip("+~") for override in overrides}


def is_given(key: str, given: set[str]) -> bool:
    """Whether the command line set ``key``, a node above it (``data.augment``), or its group where the group
    decides its settings (``optim=sgd``)."""
    parts = key.split(".")
    nodes = {".".join(parts[:n]) for n in range(2, len(parts) + 1)}
    return bool(nodes & given) or (parts[0] in GROUPS_THAT_DECIDE and parts[0] in given)


def given_values(cfg: TrainConfig, given: set[str]) -> dict[str, object]:
    """The config's values (dotted keys) that the command line set."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    return {key: value for key, value in flatten(tree).items() if is_given(key, given)}  # type: ignore[arg-type]


def plan_for(cfg: TrainConfig, given: set[str] | None = None) -> Plan:
    """The plan for this config's data on this machine (a few timed steps: seconds), built around the values of the
    ``given`` keys (the command line's: ``model.base_channels=32`` is the width timed and planned for)."""
    fast = choose_fast_path(resolve_device(cfg.trainer.device), cfg.trainer.precision.value, cfg.trainer.channels_last)
    m = cfg.model
    data = fingerprint_data(cfg.data, m.in_channels, m.num_classes)
    budget = duration_seconds(cfg.trainer.time_budget) if cfg.trainer.time_budget else None

    def time_step(width: int, depth: int, patch: int, batch: int) -> float:
        return time_steps(fast, width, depth, m.in_channels, m.num_classes, patch, batch).seconds

    on_gpu, names = fast.device.type == "cuda", list(cfg.data.class_names)
    fixed = given_values(cfg, given or set())
    return make_plan(data, fast.describe(), on_gpu, budget, names, time_step, binary=m.num_classes == 1, given=fixed)


def apply_plan(cfg: TrainConfig, values: dict[str, object], given: set[str]) -> TrainConfig:
    """``cfg`` with the plan's ``values`` wherever the command line did not set the key."""
    tree = OmegaConf.structured(cfg)
    for key, value in values.items():
        if not is_given(key, given):
            OmegaConf.update(tree, key, value, merge=False)
    return OmegaConf.to_object(tree)  # type: ignore[return-value]
