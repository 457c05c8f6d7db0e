"""`unetseg plan`: the recipe `unetseg train experiment=auto` would train, without training (unetseg.planning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from unetseg.config import TrainConfig
from unetseg.io.atomic import write_text_atomic
from unetseg.planning.apply import given_keys, is_given, plan_for
from unetseg.planning.rules import describe_fingerprint
from unetseg.runner import run_command
from unetseg.runtime.console import console


def plan(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    given = given_keys(list(HydraConfig.get().overrides.task))
    planned = plan_for(cfg, given)
    console.print(describe_fingerprint(planned))
    console.print(planned.table({choice.key for choice in planned.choices if is_given(choice.key, given)}))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "plan.yaml", planned.to_yaml())
    console.print(f"plan: {run_dir / 'plan.yaml'} · train it: unetseg train experiment=auto (with the same settings)")
    return planned.to_dict()


def main(argv: list[str]) -> None:
    run_command("plan", plan, argv)
