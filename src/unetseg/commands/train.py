"""`unetseg train`: compose the config, train, and leave checkpoints, metrics, curves and a report in the
run directory (and in the loggers that trainer.loggers names)."""

from __future__ import annotations

import logging
import os
import shlex
import socket
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from unetseg.checks import CHECKS
from unetseg.config import TrainConfig
from unetseg.io.atomic import write_text_atomic
from unetseg.io.claims import claim_folder
from unetseg.io.strict_json import to_json
from unetseg.model.checkpoint import checkpoint_in
from unetseg.overrides import hydra_quoted, quoting_advice
from unetseg.planning.apply import apply_plan, given_keys, is_given, plan_for
from unetseg.planning.rules import describe_fingerprint
from unetseg.reporting.run_report import write_run_report
from unetseg.runner import run_command
from unetseg.runtime.console import config_tree, console
from unetseg.runtime.distributed import broadcast_from_main, current_world, gather_objects
from unetseg.runtime.errors import MachineFault, UserError, describe_storage_error
from unetseg.runtime.interrupts import Interrupted, interrupts_between_steps
from unetseg.runtime.paths import user_path
from unetseg.tracking.loggers import Loggers, flatten, open_loggers
from unetseg.training.budget import readable
from unetseg.training.calibration import PROVISIONAL, ThresholdChoice
from unetseg.training.run_folder import refuse_to_train_into
from unetseg.training.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)


def start_loggers(cfg: TrainConfig, run_dir: Path, tree: dict[str, Any], resumed_from: Path | None) -> Loggers:
    """The loggers trainer.loggers names, with the composed config as parameters (a resumed run names the
    checkpoint it continues, so its logged run can be tied to the earlier one)."""
    t = cfg.trainer
    if not t.loggers:
        return Loggers()
    tags = {"unetseg.run_dir": str(run_dir.resolve())}
    if resumed_from is not None:
        tags["unetseg.resumed_from"] = str(resumed_from.resolve())
    names = [name.value for name in t.loggers]
    loggers = open_loggers(names, run_dir, user_path(cfg.runs_root), t.mlflow_tracking_uri, t.mlflow_experiment, tags)
    loggers.log_params(flatten(tree))
    return loggers


def planned(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """experiment=auto: the recipe planned for this data on this machine, merged into ``cfg`` wherever the command
    line left the key open; printed, and written to plan.yaml. Rank 0 plans for every rank. A run that resumes
    a planned run (trainer.resume=PATH) takes that run's plan.yaml, so it continues the same experiment."""
    world = current_world()
    given = given_keys(list(HydraConfig.get().overrides.task))
    reused = reused_plan(cfg.trainer.resume)
    plan = None
    if reused is not None:
        values = reused
    else:
        plan = plan_for(cfg, given) if world.is_main else None
        values = broadcast_from_main(plan.values() if plan is not None else None)  # type: ignore[assignment]
    result = apply_plan(cfg, values, given)
    CHECKS["train"](result)
    if world.is_main and plan is not None:
        console.print(describe_fingerprint(plan))
        console.print(plan.table({key for key in values if is_given(key, given)}))
        write_text_atomic(run_dir / "plan.yaml", plan.to_yaml())
        log.info("plan: %s", plan.values())
    elif reused is not None:
        console.print(f"plan: the resumed run's plan.yaml ({len(reused)} settings)")
    return result


def reused_plan(resume: str | None) -> dict[str, Any] | None:
    """The settings of the plan.yaml beside the checkpoint that trainer.resume names (not for resume=auto)."""
    if resume is None or resume == "auto":
        return None
    path = checkpoint_in(resume, "last.pt", "trainer.resume").parent.parent / "plan.yaml"
    if not path.is_file():
        return None
    settings = OmegaConf.to_container(OmegaConf.load(path)).get("settings")  # type: ignore[union-attr]
    if not isinstance(settings, dict):
        raise UserError(f"{path} has no settings: resume without experiment=auto, or train again")
    return settings


def train(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    started = time.time()
    if cfg.plan:
        cfg = planned(cfg, run_dir)
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    if cfg.verbose:  # the run directory keeps it anyway, in .hydra/config.yaml
        console.print(config_tree(tree, title="unetseg train"))  # type: ignore[arg-type]

    def open_loggers_for(resumed_from: Path | None) -> Loggers:
        return start_loggers(cfg, run_dir, tree, resumed_from)  # type: ignore[arg-type]

    # The run folder is this run's alone (rank 0 claims it for all ranks under torchrun).
    claim = claim_folder(run_dir, "train", "choose another hydra.run.dir") if current_world().is_main else nullcontext()
    with claim:
        refuse_to_train_into(run_dir, cfg.trainer.resume)
        trainer = Trainer(
            cfg, run_dir, open_loggers_for, started_unix=started, normalization_given=normalization_given()
        )
        try:
            with interrupts_between_steps():
                result = trainer.fit()
            summary = finish(cfg, run_dir, result, started, trainer.loggers)
        except Interrupted as stop:
            stop.detail = stop.detail or resume_advice(trainer)  # a stop while caching the data says so itself
            trainer.loggers.close("KILLED")
            raise
        except OSError as error:  # a full disk, a read-only folder: say what is kept and how to go on
            trainer.loggers.close("FAILED")
            message = describe_storage_error(error)
            if message is None:
                raise
            last = trainer.checkpoint_dir / "last.pt"
            if trainer.cfg.trainer.save_last and last.is_file():
                message += f"; {last} keeps the last finished epoch: go on with: {resume_command(last)}"
            raise MachineFault(message) from None
        except BaseException as error:  # a crash, in training or after it: the logged run says so
            trainer.loggers.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
            raise
        trainer.loggers.close("FINISHED")
    return summary


def normalization_given() -> bool:
    """Whether data.normalization.* was set on the command line (it then holds over trainer.init_from's)."""
    return any(o.lstrip("+~").startswith("data.normalization") for o in HydraConfig.get().overrides.task)


def resume_command(checkpoint: Path) -> str:
    """This command line again, resuming from ``checkpoint`` (in the same run folder if one was given), ready to
    paste into a shell: the path quoted for Hydra too where its grammar needs it (``(``, ``,``, spaces...)."""
    given = HydraConfig.get().overrides
    # (a fine-tuning run's last.pt holds the weights it started from: no trainer.init_from with trainer.resume)
    overrides = [o for o in given.task if not o.startswith(("trainer.resume=", "trainer.init_from="))]
    overrides += [o for o in given.hydra if o.startswith("hydra.run.dir=")]
    resume = f"trainer.resume={checkpoint}"
    quoted = hydra_quoted(resume) if quoting_advice(resume) else shlex.quote(resume)
    return f"{shlex.join(['unetseg', 'train', *overrides])} {quoted}"


def resume_advice(trainer: Trainer) -> str:
    """The line a stopped training ends with: what was kept and the exact command that goes on."""
    checkpoint = trainer.interrupted_checkpoint
    if checkpoint is None:
        last = trainer.checkpoint_dir / "last.pt"
        if trainer.cfg.trainer.save_last and last.is_file():  # torchrun, or no step of this run had finished
            return f"{last} keeps the last finished epoch; go on with: {resume_command(last)}"
        return "nothing to resume from was saved (trainer.save_last=false, or no epoch had finished)"
    command = resume_command(checkpoint)
    where = f"epoch {trainer.epoch}, step {trainer.steps_done} of {len(trainer.loader)}"
    return f"{checkpoint} keeps the run as of {where}; go on with: {command}"


def same_scores(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal records, an undefined score (NaN, e.g. matched IoU without a match) equal to itself."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)


def finish(cfg: TrainConfig, run_dir: Path, result: TrainResult, started: float, loggers: Loggers) -> dict[str, Any]:
    """metrics.json, report.html and the loggers' last records (on the main process); the closing lines."""
    world = current_world()
    if world.distributed:
        ranks_best = gather_objects(result.best)  # the all-reduced metrics must agree on every rank
        if world.is_main and any(not same_scores(best, ranks_best[0]) for best in ranks_best):
            raise RuntimeError(f"validation metrics differ between ranks: {ranks_best}")
        if not world.is_main:
            return {}
    summary = {
        "status": "completed",
        "best_epoch": result.best_epoch,
        "best": result.best,
        "last": result.last,
        "epochs": result.epochs,
        "stopped_early": result.stopped_early,
        "monitor": cfg.trainer.monitor,
        "parameters": result.parameters,
        "wall_time_s": result.wall_time_s,
        "start_s": result.start_s,  # data loading (the disk cache's fill) and set-up, to the first batch
        "precision": result.precision,
        "data": result.data,
        "logging_s": {key: round(value, 3) for key, value in result.logging_s.items()},
        "checkpoint_best": str(result.best_checkpoint),
        "checkpoint_last": str(result.last_checkpoint) if result.last_checkpoint else None,
        "threshold": threshold_summary(cfg, result),
    }
    if result.time_budget is not None:  # the time spent up to here: the report comes after
        spent = result.time_budget["spent_before_s"] + time.time() - started
        summary["time_budget"] = {**result.time_budget, "spent_s": round(spent, 1)}
    summary["process"] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_unix": started,
        "finished_unix": time.time(),
    }
    if world.distributed:
        summary["world_size"] = world.size
        summary["best_per_rank"] = ranks_best
    write_text_atomic(run_dir / "metrics.json", to_json(summary, indent=2), durable=True)
    report = write_report(cfg, run_dir)
    loggers.log_best(result.best_epoch, result.best)
    loggers.log_files([result.best_checkpoint, report, run_dir / "curves.png"])
    best = result.best.get(cfg.trainer.monitor)  # none when the monitored score was never defined (NaN)
    best_text = f"{cfg.trainer.monitor} {best:.4f}" if best is not None else f"{cfg.trainer.monitor} never defined"
    console.print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}, {best_text})")
    if result.threshold is not None:
        console.print(threshold_line(result.threshold))
    console.print(f"last checkpoint: {result.last_checkpoint or 'not kept (trainer.save_last=false: no resume)'}")
    console.print(f"metrics: {run_dir / 'metrics.jsonl'} (per epoch), {run_dir / 'metrics.json'} (summary)")
    console.print(f"curves: {run_dir / 'curves.png'} · report: {report}")
    if result.time_budget is not None:
        spent = result.time_budget["spent_before_s"] + time.time() - started
        line = (
            f"time budget {readable(result.time_budget['budget_s'])}: {result.epochs} epochs, {readable(spent)} "
            "in all (data, training, validation, checkpoints and the report)"
        )
        console.print(line)
        log.info("%s", line)
    return summary


def threshold_summary(cfg: TrainConfig, result: TrainResult) -> dict[str, Any]:
    """metrics.json's record of the decision threshold best.pt holds: chosen (trainer.threshold=auto), or given."""
    if result.threshold is not None:
        return result.threshold.to_dict()
    given = cfg.trainer.threshold
    return {"chosen": PROVISIONAL if given == "auto" else float(given), "by": "trainer.threshold"}


def threshold_line(choice: ThresholdChoice) -> str:
    """The closing line of trainer.threshold=auto: the choice, what it gains over 0.5, and the pixel error's optimum."""
    return (
        f"threshold: {choice.chosen:g} chosen on the {choice.images} validation image(s) by {choice.by} "
        f"{choice.score:.4f} ({choice.score_at_provisional:.4f} at {PROVISIONAL}), stored in best.pt; the lowest "
        f"pixel error is at {choice.pixel_error_optimum:g} ({choice.pixel_error:.4f}). Chosen on the validation "
        "split: for an honest score evaluate a held-out test set (unetseg evaluate input=... labels=...)"
    )


def write_report(cfg: TrainConfig, run_dir: Path) -> Path:
    """report.html; a failure is a warning: the trained model matters more than its report."""
    report = run_dir / "report.html"
    try:
        report_started = time.perf_counter()
        _, gallery_note = write_run_report(run_dir, cfg.trainer.report_images, cfg.trainer.device)
        log.info("report.html written in %.2f s", time.perf_counter() - report_started)
        if gallery_note:
            console.print(f"[yellow]warning:[/] the report has no gallery: {gallery_note}")
            log.warning("the report has no gallery: %s", gallery_note)
    except Exception as error:
        console.print(
            f"[yellow]warning:[/] no report ({type(error).__name__}: {error}); retry: unetseg report {run_dir}"
        )
    return report


def main(argv: list[str]) -> None:
    run_command("train", train, argv)
