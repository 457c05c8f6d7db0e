"""The training loop, as a story of named steps (the shape of nnU-Net's ``run_training``).

:meth:`Trainer.fit` calls :meth:`~Trainer.on_train_start`, then for each epoch
:meth:`~Trainer.on_epoch_start`, :meth:`~Trainer.train_epoch` (one :meth:`~Trainer.train_step` per batch),
:meth:`~Trainer.validation_epoch` and :meth:`~Trainer.on_epoch_end`, and finally :meth:`~Trainer.on_train_end`.
Checkpoints (:meth:`~Trainer.save_checkpoints`), the metrics file (:meth:`~Trainer.append_metrics`), the
curves and loggers (:meth:`~Trainer.log_epoch`) and early stopping (:meth:`~Trainer.should_stop_early`) each
live in one step of their own, so a variant changes one step.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import Progress
from torch.nn.parallel import DistributedDataParallel

from unetseg.config import TrainConfig
from unetseg.data.dataset import LabelledImages, data_cache, label_rule, load_splits
from unetseg.data.normalize import PercentileNormalizer
from unetseg.data.pairing import with_default_root
from unetseg.io.atomic import copy_atomic, write_text_atomic
from unetseg.io.strict_json import to_json
from unetseg.model import build_network, count_parameters
from unetseg.model.checkpoint import Checkpoint, checkpoint_in, load_checkpoint, newest_checkpoints, save_checkpoint
from unetseg.model.transfer import load_transferable, shape_difference
from unetseg.objects.instances import InstanceRule, resolve_rule
from unetseg.runtime.console import console, progress_bars
from unetseg.runtime.device import resolve_device
from unetseg.runtime.distributed import all_reduce_sum, broadcast_buffers, broadcast_from_main, current_world
from unetseg.runtime.errors import UserError
from unetseg.runtime.interrupts import Interrupted, interrupt_requested, stop_if_interrupted
from unetseg.runtime.paths import user_path
from unetseg.runtime.precision import choose_fast_path, maybe_compile
from unetseg.scoring.names import AP50, DICE, LOSS, PIXEL_ERROR, RAND_ERROR, dice_of, lower_is_better, validation_scores
from unetseg.scoring.tables import metrics_table
from unetseg.tracking.curves import CurvesFile
from unetseg.tracking.history import read_history
from unetseg.tracking.loggers import Loggers
from unetseg.tracking.pictures import panels, positive_class, thumbnail
from unetseg.training.border_weights import loss_weights
from unetseg.training.budget import TimeBudget, budget_state_problem, duration_seconds, readable
from unetseg.training.calibration import PROVISIONAL, ThresholdChoice, calibrate
from unetseg.training.fingerprint import (
    difference,
    fingerprint,
    initialised_from,
    training_state_problem,
    with_initialisation,
)
from unetseg.training.loader import start_epoch, training_loader
from unetseg.training.losses import WEIGHTED, compute_loss
from unetseg.training.monitor import Monitor
from unetseg.training.optimizers import build_optimizer
from unetseg.training.schedules import Horizon, build_schedule
from unetseg.training.validation import Preview, validate
from unetseg.training.weight_average import WeightAverage

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    best_epoch: int
    best: dict[str, float]
    last: dict[str, float]
    epochs: int  # epochs trained (fewer than asked when stopped early)
    stopped_early: bool
    parameters: int
    wall_time_s: float
    start_s: float | None  # from the start (data loading, the disk cache's fill) to the first batch ready
    best_checkpoint: Path
    last_checkpoint: Path | None  # None with trainer.save_last=false
    data: dict[str, Any]  # image counts and sizes, for the report
    precision: str
    logging_s: dict[str, float]  # time spent drawing curves and in the loggers (and their pictures)
    time_budget: dict[str, Any] | None = None  # with trainer.time_budget: the budget, the time spent, the epochs
    threshold: ThresholdChoice | None = None  # trainer.threshold=auto: the choice stored in best.pt


class Trainer:
    PREVIEWS = 3  # validation images a logger that takes pictures gets at each new best ...
    PREVIEW_SIDE = 256  # ... each panel shrunk to this many pixels: TensorBoard's PNG encoding stays cheap
    RESUME_CANDIDATES = 20  # trainer.resume=auto looks at this many of the newest last.pt at most

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        open_loggers: Callable[[Path | None], Loggers] | None = None,
        started_unix: float | None = None,
        normalization_given: bool = False,
    ) -> None:
        """``normalization_given``: data.normalization.* was set on the command line, so it holds even when the
        run starts from a checkpoint (trainer.init_from) that brings its own."""
        # No data.root for a folder data set: data/train under the launch folder, as the ISBI scripts lay it out.
        data, self.default_root = with_default_root(cfg.data)
        cfg = dataclasses.replace(cfg, data=data) if self.default_root else cfg
        self.cfg = cfg
        # A time budget counts from the command's start (``started_unix``: planning a recipe counts too).
        self.budget_started = time.perf_counter() - (time.time() - started_unix) if started_unix else None
        self.normalization_given = normalization_given
        self.run_dir = run_dir
        # Opened once the data has loaded and a resume was checked: bad input must leave no logged run behind.
        self.open_loggers = open_loggers
        self.loggers = Loggers()  # the main process's; empty on the others
        self.checkpoint_dir = run_dir / "checkpoints"
        self.metrics_path = run_dir / "metrics.jsonl"
        self.world = current_world()
        self.fast = choose_fast_path(
            resolve_device(cfg.trainer.device), cfg.trainer.precision.value, cfg.trainer.channels_last
        )
        self.device = self.fast.device
        self.spec = cfg.model
        normalization = cfg.data.normalization
        self.normalizer = PercentileNormalizer(normalization.low_percentile, normalization.high_percentile)
        self.class_names = list(cfg.data.class_names)
        self.objects = objects_rule(cfg.data.target.value, self.class_names) if cfg.trainer.object_scores else None
        self.shuffle_generator = torch.Generator()
        self.monitor = Monitor(cfg.trainer.monitor, cfg.trainer.monitor_ema)
        self.first_epoch, self.epoch = 1, 0
        self.best: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.stopped_early = False
        self.resumed_from: Path | None = None  # the last.pt this run continues, if any
        self.initialised_from: Path | None = None  # trainer.init_from, as found
        self.reinitialised: list[str] = []  # tensors of the output layer that did not come from trainer.init_from
        self.source: Checkpoint | None = None  # trainer.init_from's or trainer.resume's checkpoint, read first
        self.source_path: Path | None = None
        # Progress within the epoch at hand (steps trained, their summed loss), for a checkpoint written when
        # a signal stops the run between two steps; a run resumed from one skips those steps.
        self.steps_done, self.epoch_loss_sum = 0, torch.zeros(())
        self.skip_steps, self.skipped_loss = 0, 0.0
        self.interrupted_checkpoint: Path | None = None
        self.previews: list[Preview] = []
        self.pictures_s = 0.0  # drawing the loggers' pictures
        self.start_s: float | None = None  # to the first training batch
        # The epochs this run trains: trainer.epochs, or with a time budget as many as fit (planned every epoch).
        self.planned_epochs = cfg.trainer.epochs
        budget = cfg.trainer.time_budget
        self.budget = TimeBudget(duration_seconds(budget) or 0.0) if budget is not None else None
        self.validation_s = 0.0
        self.curves = CurvesFile(run_dir, self.class_names, cfg.trainer.monitor)

    def fit(self) -> TrainResult:
        self.on_train_start()
        with progress_bars() as progress:
            self.bars = TrainingBars(progress, self.planned_epochs, self.first_epoch - 1, len(self.loader))
            try:
                epoch = self.first_epoch
                while epoch <= self.planned_epochs:
                    self.on_epoch_start(epoch)
                    train_loss = self.train_epoch()
                    metrics = self.validation_epoch(train_loss)
                    stop_if_interrupted()
                    self.on_epoch_end(metrics)
                    if self.should_stop_early():
                        break
                    self.plan_epochs()
                    epoch += 1
            except Interrupted as stop:
                if stop.safe:  # a second signal lands anywhere, mid-step too: nothing from there is saved
                    self.on_interrupted()
                raise
        return self.on_train_end()

    # ---- set-up ------------------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        """Seed, load the data, build the network and its optimiser, resume if asked, and say what runs."""
        self.started = time.perf_counter()
        if self.budget_started is None:
            self.budget_started = self.started
        seed_everything(self.cfg.trainer.seed)
        self.source = self.starting_checkpoint()
        self.train_items, self.val_items = self.load_data()
        self.fingerprint = fingerprint(self.cfg, self.train_items, self.val_items)
        self.loader = training_loader(self.train_items, self.cfg, self.world, self.device, self.shuffle_generator)
        resumed = self.resume_source()
        self.set_up_network(resumed)
        self.set_up_optimisation()
        if resumed is not None:
            self.restore(resumed)
        self.wrap_network()
        self.describe()
        if self.open_loggers is not None and self.world.is_main:
            self.loggers = self.open_loggers(self.resumed_from)

    def starting_checkpoint(self) -> Checkpoint | None:
        """The checkpoint trainer.init_from (fine-tuning) or trainer.resume=PATH names, read before the data:
        a fine-tuning run normalises its images as its source did (unless data.normalization.* was given on
        the command line), and so does a resumed fine-tuning run. A network of another shape is one line."""
        t = self.cfg.trainer
        if t.init_from is not None:
            path = checkpoint_in(t.init_from, "best.pt", "trainer.init_from")
            source = load_checkpoint(path)
            differs = shape_difference(source.model, self.spec)
            if differs:
                there, here, fix = differs
                raise UserError(
                    f"trainer.init_from={path} has {there}; this run has {here}: give {fix} to start from its "
                    "weights (only model.num_classes may differ)"
                )
            self.initialised_from = path
        elif t.resume is not None and t.resume != "auto":
            path = checkpoint_in(t.resume, "last.pt", "trainer.resume")  # a file, or a run folder
            source = load_checkpoint(path)
        else:
            return None
        self.source_path = path
        stored = (source.training_state or {}).get("fingerprint")
        fine_tuned = self.initialised_from is not None or (isinstance(stored, dict) and initialised_from(stored))
        if fine_tuned and not self.normalization_given:  # (a run trained from scratch: as this config says)
            self.normalizer = source.normalization
        return source

    def load_data(self) -> tuple[LabelledImages, LabelledImages]:
        """Training and validation images; the border weight maps when the loss uses them (computed once)."""
        cfg, t = self.cfg, self.cfg.trainer
        rule = label_rule(cfg.data, cfg.model.num_classes)
        train, val = load_splits(cfg.data, cfg.model.in_channels, rule, self.normalizer, weighted=t.loss in WEIGHTED)
        train.instances = None  # only validation scores objects: 4 bytes per pixel less for the training set
        if t.loss in WEIGHTED:
            weights = loss_weights(cfg)
            train.with_weights(weights.compute, weights.key, data_cache(cfg.data))
        return train, val

    def set_up_network(self, resumed: Checkpoint | None) -> None:
        """The network on its device (weights from ``resumed``, if any); SyncBatchNorm if asked."""
        model = build_network(self.spec)
        if resumed is not None:
            model.load_state_dict(resumed.state_dict)
        elif self.initialised_from is not None:
            assert self.source is not None
            self.reinitialised = load_transferable(model, self.source.state_dict)
        self.source = None  # (its weights are in the model now)
        if self.cfg.trainer.sync_batchnorm and self.world.distributed:
            if self.device.type != "cuda":
                raise UserError(
                    "trainer.sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only); "
                    "set it to false on CPUs"
                )
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = self.fast.prepare_model(model)
        self.parameters = count_parameters(self.model)
        # trainer.weight_ema: the average starts as these weights (a resumed run's average: restore() puts the
        # weights that train back into self.model)
        decay = self.cfg.trainer.weight_ema
        self.average = WeightAverage(self.model, decay) if decay > 0 else None

    def set_up_optimisation(self) -> None:
        cfg = self.cfg
        self.optimizer = build_optimizer(self.model.parameters(), cfg.optim)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.fast.needs_grad_scaler)
        self.horizon = Horizon(self.planned_epochs * len(self.loader), movable=self.budget is not None)
        self.schedule = build_schedule(self.optimizer, cfg.schedule, self.horizon, lower_is_better(self.monitor.key))

    def wrap_network(self) -> None:
        """``network`` trains (compiled if asked, DDP under torchrun); ``evaluated`` validates, unwrapped:
        ranks see different image counts, and DDP needs them in lockstep."""
        example = self.fast.prepare_input(torch.from_numpy(self.train_items.images[0])[None])
        self.evaluated = maybe_compile(self.model, self.cfg.trainer.compile, example, self.fast)
        self.network: torch.nn.Module = self.evaluated
        if self.world.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = DistributedDataParallel(self.evaluated, device_ids=device_ids)

    def describe(self) -> None:
        """The start-up summary, once everything is loaded and checked (so the run directory it names is
        the one that will be kept): data, model, recipe, device and precision, monitor."""
        cfg, t, monitor = self.cfg, self.cfg.trainer, self.monitor
        ranks = f" · {self.world.size} processes ({dist_backend()})" if self.world.distributed else ""
        log.info("%s%s", self.fast.describe(), ranks)
        patches = f" ({cfg.data.patch_size}×{cfg.data.patch_size} crops)" if cfg.data.patch_size else ""
        patches += f", {len(self.loader.dataset)} samples per epoch" if cfg.data.samples_per_epoch else ""  # type: ignore[arg-type]
        pairing = ""
        if cfg.data.folds is not None:  # which block validates: fold i of K, by its first and last image
            names = self.val_items.names
            pairing = f", fold {cfg.data.fold} of {cfg.data.folds} validates ({names[0]} … {names[-1]})"
        pairing += f" ({self.train_items.pairing})" if self.train_items.pairing else ""
        pairing += f", {self.train_items.storage}" if self.train_items.storage else ""
        recipe = (
            f"{cfg.optim.name.value} lr {cfg.optim.lr:g}, {cfg.schedule.name.value}, {t.loss.value}, "
            f"{t.epochs} epochs × {len(self.loader)} steps of {t.batch_size}"
        )
        if self.budget is not None:
            recipe = recipe.replace(
                f"{t.epochs} epochs",
                f"time budget {readable(self.budget.seconds)} (epochs planned after each one, first guess {t.epochs})",
            )
        console.print(
            f"[bold]data[/]: {len(self.train_items)} training{patches}, {len(self.val_items)} validation images"
            f"{pairing} · [bold]model[/]: U-Net {self.spec.upsampling.value} {self.spec.base_channels} wide, "
            f"{self.parameters:,} parameters · [bold]recipe[/]: {recipe} · [bold]on[/]: {self.fast.describe()}{ranks}"
            f" · [bold]best by[/]: {monitor.key}{f' (EMA {monitor.ema})' if monitor.ema else ''}"
            f"{self.describe_threshold()}{self.describe_start()} · [bold]run[/]: {self.run_dir}"
        )

    def describe_threshold(self) -> str:
        if self.cfg.trainer.threshold != "auto":
            return ""
        return f" · [bold]threshold[/]: auto (validation at {PROVISIONAL}, chosen on the validation images at the end)"

    def describe_start(self) -> str:
        """Where the data and the weights come from, when that is not what the config spells out."""
        parts = []
        if self.default_root:
            parts.append(f" · [bold]data.root[/] not given: {self.cfg.data.root} (the ISBI scripts' data/train)")
        if self.initialised_from is not None:
            normalization = "data.normalization as given" if self.normalization_given else "its normalisation"
            start = f" · initialised from {self.initialised_from} ({normalization}"
            if self.reinitialised:
                layer = ", ".join(self.reinitialised)
                start += f"; the output layer ({layer}) re-initialised for {self.spec.num_classes} classes"
            parts.append(start + ")")
        return "".join(parts)

    # ---- resuming ----------------------------------------------------------------------------------------

    def resume_source(self) -> Checkpoint | None:
        """The last.pt that trainer.resume names (auto: the newest under runs_root), checked against this run."""
        t = self.cfg.trainer
        if t.resume is None:
            return None
        if t.resume == "auto":  # rank 0 chooses for every rank: a run finishing meanwhile must not split them
            chosen = self.newest_resumable() if self.world.is_main else None
            path = Path(str(broadcast_from_main(str(chosen[0]) if chosen else None)))
            checkpoint = chosen[1] if chosen else load_checkpoint(path)
        else:
            assert self.source is not None and self.source_path is not None  # read first: starting_checkpoint
            path, checkpoint = self.source_path, self.source
            problem = self.why_not_resumable(checkpoint)
            if problem:
                raise UserError(f"trainer.resume={path}: {problem}")
            stored = (checkpoint.training_state or {}).get("fingerprint")
            if stored is not None:  # a resumed fine-tuning run still records what it started from
                self.fingerprint = with_initialisation(self.fingerprint, stored)
        self.resumed_from = path
        return checkpoint

    def why_not_resumable(self, checkpoint: Checkpoint) -> str | None:
        """Why this run cannot continue ``checkpoint`` (a different experiment, or one already trained as far
        as asked), in words with the fix; None if it can."""
        epochs = self.cfg.trainer.epochs
        if checkpoint.training_state is None:
            return "it has no training state to resume from: use the run's checkpoints/last.pt"
        damaged = training_state_problem(checkpoint.training_state)
        if damaged:
            return f"its training state is damaged ({damaged}): resume from another last.pt, or train again"
        progress = checkpoint.training_state.get("epoch_progress")
        if progress and progress.get("world_size", 1) != self.world.size:
            return (
                f"it was stopped inside epoch {checkpoint.epoch + 1} by a run of {progress.get('world_size', 1)} "
                f"process(es), and this run has {self.world.size}: resume it with as many"
            )
        stored = checkpoint.training_state.get("fingerprint")
        if stored is None:  # written before fingerprints: the network at least must match
            if checkpoint.model != self.spec:
                return (
                    f"it holds a different network ({checkpoint.model}) than this config ({self.spec}): "
                    "resume with the model settings of that run"
                )
        else:
            origin = initialised_from(stored)
            if origin is not None and self.cfg.trainer.resume == "auto":
                return (
                    f"it was fine-tuned from trainer.init_from={origin}: resume it by its path, "
                    "trainer.resume=RUN/checkpoints/last.pt"
                )
            differs = difference(stored, with_initialisation(self.fingerprint, stored))
            if differs:
                return (
                    f"it is another experiment ({differs}): resume with the same settings and data, apart from "
                    "trainer.epochs"
                )
        if self.budget is not None:
            budget = checkpoint.training_state.get("time_budget")
            problem = "it was trained without a time budget" if budget is None else budget_state_problem(budget)
            if problem:
                return f"{problem}: resume it with the settings it was trained with"
            if budget["spent_s"] >= self.budget.seconds:
                return (
                    f"it has already spent {readable(budget['spent_s'])} of trainer.time_budget="
                    f"{self.cfg.trainer.time_budget}: raise the budget to train on"
                )
        elif checkpoint.epoch >= epochs:
            return (
                f"it has already trained {checkpoint.epoch} of trainer.epochs={epochs}: raise trainer.epochs above "
                f"{checkpoint.epoch} to train on"
            )
        return None

    def newest_resumable(self) -> tuple[Path, Checkpoint]:
        """trainer.resume=auto: the newest last.pt under runs_root that this run can continue (the same
        experiment, not yet trained as far as asked), said on the console; else why none qualifies."""
        root = user_path(self.cfg.runs_root)
        candidates = newest_checkpoints(root, "last.pt", exclude=self.run_dir)
        if not candidates:
            raise UserError(
                f"trainer.resume=auto: no training run with checkpoints/last.pt under {root}: "
                "train one first, or give trainer.resume=path/to/last.pt"
            )
        reasons = []
        for path in candidates[: self.RESUME_CANDIDATES]:
            try:
                checkpoint = load_checkpoint(path)
            except UserError as error:
                reasons.append(str(error))
                continue
            problem = self.why_not_resumable(checkpoint)
            if problem is None:
                console.print(f"trainer.resume=auto: continuing {path} (the newest unfinished run of this experiment)")
                return path, checkpoint
            reasons.append(f"{path}: {problem}")
        raise UserError(
            f"trainer.resume=auto: none of the {len(reasons)} newest last.pt under {root} is an unfinished run of "
            f"this experiment (the newest, {reasons[0]})"
        )

    def restore(self, resumed: Checkpoint) -> None:
        """Load the optimiser, scaler, schedule and RNG state, and carry over the earlier run's history
        (metrics.jsonl and best.pt) so this run directory tells the whole story."""
        state = resumed.training_state
        assert state is not None and self.resumed_from is not None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.schedule.load_state_dict(state["schedule"])
            torch.set_rng_state(state["torch_rng"])
            monitor = Monitor.from_state(state["monitor"])
            if self.average is not None:  # the checkpoint's weights are the average; these are the ones that train
                self.model.load_state_dict(state["weights"])
                self.average.continue_from(int(state["weight_updates"]))
        except (KeyError, TypeError, ValueError, RuntimeError) as error:  # an edited file: the fingerprint matched
            raise UserError(
                f"trainer.resume={self.resumed_from}: its training state does not fit this run "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no detail'}): "
                "resume from another last.pt, or train again"
            ) from None
        if self.world.is_main:
            source_run = self.resumed_from.parent.parent
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            if (self.resumed_from.parent / "best.pt").is_file():
                copy_atomic(self.resumed_from.parent / "best.pt", self.checkpoint_dir / "best.pt")
            self.carry_over_history(source_run / "metrics.jsonl", resumed.epoch)
        console.print(f"resuming from {self.resumed_from} after epoch {resumed.epoch}")
        self.monitor, self.best = monitor, dict(state["best"])
        self.epoch, self.first_epoch = resumed.epoch, resumed.epoch + 1
        budget = state.get("time_budget")
        if self.budget is not None and budget is not None:  # the time already spent counts against the budget
            self.budget.spent_before = float(budget["spent_s"])
            self.planned_epochs = max(self.first_epoch, int(budget["planned_epochs"]))
            self.horizon.total = self.planned_epochs * len(self.loader)
        progress = state.get("epoch_progress")
        if progress:  # stopped between two steps of epoch first_epoch
            self.skip_steps, self.skipped_loss = int(progress["steps"]), float(progress["loss_sum"])
            console.print(f"epoch {self.first_epoch} goes on after step {self.skip_steps}")

    def carry_over_history(self, source: Path, epochs: int) -> None:
        """The earlier run's complete metrics.jsonl lines up to the resumed epoch (a line cut short by a crash
        is left out, so the next epoch's line starts on a line of its own)."""
        if not source.is_file():
            return
        try:
            records = [record for record in read_history(source) if record["epoch"] <= epochs]
        except UserError:  # no complete epoch in it
            records = []
        write_text_atomic(self.metrics_path, "".join(to_json(record) + "\n" for record in records))

    # ---- one epoch ---------------------------------------------------------------------------------------

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self.epoch_started = time.perf_counter()
        start_epoch(self.loader, self.shuffle_generator, self.cfg.trainer.seed, epoch, self.skip_steps)
        self.bars.start_epoch(len(self.loader), self.skip_steps)

    def train_epoch(self) -> float:
        """One pass over the loader; the mean training loss over every rank's steps."""
        self.network.train()
        loss_sum = torch.full((), self.skipped_loss, device=self.device)
        every = self.cfg.trainer.log_every_n_steps
        # On a CPU reading the loss costs nothing, so a non-finite loss is caught at its step; on a GPU reading
        # it waits for the device, so only every 10 steps (for the progress bar too) and at the epoch's end.
        check_every = 1 if self.device.type == "cpu" else 10
        first = self.skip_steps + 1
        self.steps_done, self.epoch_loss_sum, self.skip_steps, self.skipped_loss = first - 1, loss_sum, 0, 0.0
        for step, (images, labels, weights) in self.batches(first):
            loss = self.train_step(images, labels, weights)
            loss_sum += loss
            global_step = (self.epoch - 1) * len(self.loader) + step
            if self.loggers.active and global_step % every == 0:  # .item() waits for the device: only then
                self.loggers.log_step(global_step, {"train_step_loss": loss.item()})
            if step % check_every == 0 or step == len(self.loader):
                self.refuse_non_finite(loss_sum.item(), step)
            status = f"loss {loss_sum.item() / step:.4f}" if step % 10 == 0 or step == len(self.loader) else None
            self.bars.batch_done(status)
            self.steps_done = step  # (loss_sum is self.epoch_loss_sum, added to in place)
            stop_if_interrupted()  # a signal stops between steps (see unetseg.runtime.interrupts)
        # One reduction per epoch.
        totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(len(self.loader)), device=self.device)]))
        return (totals[0] / totals[1].clamp(min=1)).item()

    def batches(self, first: int) -> Iterator[tuple[int, Any]]:
        """The epoch's batches, numbered from step ``first``. A signal sent to the whole job (SLURM's scancel)
        also ends the DataLoader's worker processes, which the loader reports as a RuntimeError: with a stop
        asked for, that is the stop (at a safe point: no step of this batch has begun)."""
        loader = iter(self.loader)
        for step in itertools.count(first):
            try:
                batch = next(loader)
            except StopIteration:
                return
            except RuntimeError as error:
                if interrupt_requested() and "DataLoader worker" in str(error):
                    stop_if_interrupted()
                raise
            if self.start_s is None:
                self.start_s = time.perf_counter() - self.started
            yield step, batch

    def refuse_non_finite(self, loss_sum: float, step: int) -> None:
        """Stop at once when the training loss is no longer a number: the weights are lost to NaN, and
        nothing from here on may be saved (best.pt and last.pt keep their last good epoch)."""
        if math.isfinite(loss_sum):
            return
        kept = f"best.pt keeps epoch {self.monitor.best_epoch}" if self.monitor.best_epoch else "no checkpoint was kept"
        raise UserError(
            f"the training loss became {loss_sum} in epoch {self.epoch} (by step {step}): training stopped, {kept}; "
            f"lower optim.lr (it is {self.cfg.optim.lr:g}) or check the training images"
        )

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Forward, loss, backward and one optimiser step; returns the (detached) loss."""
        images = self.fast.prepare_input(images)
        labels = labels.to(self.device, non_blocking=True)
        pixel_weights = weights.to(self.device, non_blocking=True) if weights.numel() else None
        with self.fast.autocast():
            logits = self.network(images)
        loss = compute_loss(self.cfg.trainer.loss, logits, labels, pixel_weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.after_step()
        if self.average is not None:
            self.average.update(self.model)
        return loss.detach()

    def validation_epoch(self, train_loss: float) -> dict[str, float]:
        # Each rank's last forward pass updated its own BatchNorm running statistics: validate (and save)
        # rank 0's, on every rank.
        broadcast_buffers(self.model)
        if self.average is not None:
            broadcast_buffers(self.average.module)
        started = time.perf_counter()
        t = self.cfg.trainer
        previews = self.PREVIEWS if self.loggers.takes_pictures else 0
        validation = validate(
            self.evaluated if self.average is None else self.average.module,
            self.val_items,
            t.loss,
            self.validation_threshold,
            self.class_names,
            self.fast,
            previews,
            self.objects,
        )
        self.previews = validation.previews
        self.validation_s = time.perf_counter() - started
        return {"train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"], **validation.scores}

    def on_epoch_end(self, metrics: dict[str, float]) -> None:
        """Pick the best epoch, step a plateau schedule, save, record and report."""
        self.last = metrics
        improved = self.monitor.update(metrics, self.epoch)
        self.schedule.after_validation(metrics[self.monitor.key])
        if improved:
            self.best = metrics
        if self.world.is_main:
            self.save_checkpoints(improved)
            record = self.append_metrics(improved)
            self.log_epoch(record, improved)
        self.report_epoch(improved)

    def plan_epochs(self) -> None:
        """With a time budget: the epochs that fit, from what this run's epochs cost so far (rank 0 decides for
        every rank); the schedule's horizon moves with them, so it ends where training ends."""
        if self.budget is None:
            return
        now = time.perf_counter()
        self.budget.epoch_costs.append(now - self.epoch_started)
        planned = self.budget.epochs_that_fit(self.epoch, now - self.budget_started, self.validation_s)
        planned = int(broadcast_from_main(planned))  # type: ignore[arg-type]
        if planned != self.planned_epochs:
            self.planned_epochs = planned
            self.horizon.total = max(1, planned * len(self.loader))
            self.bars.set_epochs(planned)

    def on_interrupted(self) -> None:
        """A signal stopped the run between two steps (or validation images): keep where it was in last.pt, so
        that a resumed run goes on from the next step exactly as this one would have (one process only: under
        torchrun the ranks cannot agree on the step)."""
        if not (self.cfg.trainer.save_last and self.world.is_main) or self.world.distributed:
            return
        if self.epoch < self.first_epoch:  # stopped before the first step of this run: last.pt is still right
            return
        loss_sum = self.epoch_loss_sum.item()
        if not math.isfinite(loss_sum):  # (on a GPU the loss is read every 10 steps): keep the last good one
            return
        state = self.training_state()
        state["epoch_progress"] = {"steps": self.steps_done, "loss_sum": loss_sum, "world_size": self.world.size}
        path = self.checkpoint_dir / "last.pt"
        # epoch: the epochs completed; the progress says how far into the next one
        save_checkpoint(self.checkpoint(state, epoch=self.epoch - 1), path)
        self.interrupted_checkpoint = path

    def save_checkpoints(self, improved: bool) -> None:
        """best.pt when the monitored score improved; last.pt (with the training state) every epoch, unless
        trainer.save_last=false."""
        if improved:
            save_checkpoint(self.checkpoint(), self.checkpoint_dir / "best.pt")
        if self.cfg.trainer.save_last:
            save_checkpoint(self.checkpoint(self.training_state()), self.checkpoint_dir / "last.pt")

    def append_metrics(self, improved: bool) -> dict[str, Any]:
        """One line of metrics.jsonl per epoch; returns it."""
        record = {
            "epoch": self.epoch,
            **{k: round(v, 6) for k, v in self.last.items()},
            "epoch_time_s": round(time.perf_counter() - self.epoch_started, 3),
            "best": improved,
        }
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(to_json(record) + "\n")
        return record

    def log_epoch(self, record: dict[str, Any], improved: bool) -> None:
        """curves.png (within its time budget) and the loggers: the epoch's scalars, and at a new best a few
        validation images with their label, prediction and errors."""
        self.curves.update(time.perf_counter() - self.started)
        self.loggers.log_epoch(self.epoch, {k: v for k, v in record.items() if k not in ("epoch", "best")})
        if improved and self.previews:
            started = time.perf_counter()
            positive = positive_class(self.class_names, self.monitor.key)
            pictures = {}
            for preview in self.previews:
                four = panels(preview.image, preview.label, preview.predicted, len(self.class_names), positive)
                rows = [thumbnail(panel, self.PREVIEW_SIDE) for panel in four.values()]
                pictures[f"{preview.name} (input | label | prediction | errors)"] = np.concatenate(rows, axis=1)
            self.pictures_s += time.perf_counter() - started
            self.loggers.log_pictures(self.epoch, pictures)

    def report_epoch(self, improved: bool) -> None:
        monitor, epochs = self.monitor, self.planned_epochs
        # The best epoch's own value, as the final table shows it (the EMA, if any, is what chose it).
        best = "–" if monitor.best is None else f"{self.best.get(monitor.key, math.nan):.4f} @ {monitor.best_epoch}"
        smoothed = f", EMA {monitor.best:.4f}" if monitor.ema and monitor.best is not None else ""
        self.bars.epoch_done(f"{monitor.key} {self.last[monitor.key]:.4f} (best {best}{smoothed})")
        line = f"epoch {self.epoch}/{epochs} · {epoch_line(self.last, self.class_names, monitor.key)}"
        if self.world.is_main:
            log.info("%s%s", line, " (best)" if improved else "")
        self.bars.print(line + (" · [green]best[/]" if improved else ""))

    def should_stop_early(self) -> bool:
        patience = self.cfg.trainer.early_stopping
        if not self.monitor.should_stop(patience):
            return False
        self.stopped_early = True
        console.print(
            f"early stopping: {self.monitor.key} has not improved for {patience} epochs "
            f"(best at epoch {self.monitor.best_epoch})"
        )
        return True

    # ---- the end -----------------------------------------------------------------------------------------

    @property
    def validation_threshold(self) -> float:
        """The threshold validation and the checkpoints use: trainer.threshold, or PROVISIONAL while auto."""
        threshold = self.cfg.trainer.threshold
        return PROVISIONAL if threshold == "auto" else float(threshold)

    def calibrate_threshold(self) -> ThresholdChoice | None:
        """trainer.threshold=auto: choose the threshold on the validation images with best.pt's weights, and
        store it in best.pt (rewritten atomically). On the main process only; None with a fixed threshold."""
        if self.cfg.trainer.threshold != "auto" or not self.world.is_main:
            return None
        path = self.checkpoint_dir / "best.pt"
        if not path.is_file():  # no epoch was ever best (the monitored score was never defined)
            console.print(f"trainer.threshold=auto: no best.pt to choose a threshold for; it stays {PROVISIONAL}")
            return None
        best = load_checkpoint(path)
        network = self.fast.prepare_model(best.build_network())
        choice = calibrate(network, self.val_items, self.class_names, self.fast, self.monitor.key, self.objects)
        save_checkpoint(dataclasses.replace(best, threshold=choice.chosen), path)
        log.info("threshold %s chosen by %s on %d validation images", choice.chosen, choice.by, choice.images)
        return choice

    def on_train_end(self) -> TrainResult:
        if self.world.is_main:
            self.curves.update(time.perf_counter() - self.started, final=True)
        threshold = self.calibrate_threshold()
        best_epoch = self.monitor.best_epoch
        rows = [(f"best (epoch {best_epoch})", self.best), (f"last (epoch {self.epoch})", self.last)]
        console.print(metrics_table("validation scores", rows, self.class_names))
        return TrainResult(
            best_epoch=best_epoch,
            best=self.best,
            last=self.last,
            epochs=self.epoch,
            stopped_early=self.stopped_early,
            parameters=self.parameters,
            wall_time_s=time.perf_counter() - self.started,
            start_s=self.start_s,
            best_checkpoint=self.checkpoint_dir / "best.pt",
            last_checkpoint=self.checkpoint_dir / "last.pt" if self.cfg.trainer.save_last else None,
            data=self.data_facts(),
            precision=self.fast.describe(),
            logging_s={"curves": self.curves.drawing_s, "loggers": self.loggers.spent_s + self.pictures_s},
            time_budget=None
            if self.budget is None
            else {
                "budget_s": self.budget.seconds,
                "spent_before_s": self.budget.spent_before,  # by the run this one resumed
                "epochs": self.epoch,
            },
            threshold=threshold,
        )

    # ---- helpers -----------------------------------------------------------------------------------------

    def data_facts(self) -> dict[str, Any]:
        sizes = {f"{shape[2]}×{shape[1]}" for shape in [*self.train_items.shapes(), *self.val_items.shapes()]}
        return {
            "train_images": len(self.train_items),
            "val_images": len(self.val_items),
            "image_sizes": sorted(sizes),
            **({"fold": self.cfg.data.fold, "folds": self.cfg.data.folds} if self.cfg.data.folds is not None else {}),
        }

    def checkpoint(self, training_state: dict[str, Any] | None = None, epoch: int | None = None) -> Checkpoint:
        """The network as validated (with trainer.weight_ema, the average), and ``training_state`` for last.pt."""
        return Checkpoint(
            state_dict=cpu_weights(self.model if self.average is None else self.average.module),
            model=self.spec,
            normalization=self.normalizer,
            class_names=self.class_names,
            threshold=self.validation_threshold,
            epoch=self.epoch if epoch is None else epoch,
            metrics=self.last,
            target=self.cfg.data.target.value,
            boundary_width=self.cfg.data.boundary_width,
            training_state=training_state,
        )

    def training_state(self) -> dict[str, Any]:
        """Everything besides the weights that a resumed run needs to continue exactly (tensors and
        primitives only, so last.pt still loads with weights_only=True)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "monitor": self.monitor.state_dict(),
            "best": dict(self.best),
            "torch_rng": torch.get_rng_state(),
            "fingerprint": self.fingerprint,
            **(
                {
                    "weights": cpu_weights(self.model),
                    "weight_updates": self.average.updates,
                }
                if self.average is not None
                else {}
            ),
            **(
                {"time_budget": self.budget.state_dict(time.perf_counter() - self.budget_started, self.planned_epochs)}
                if self.budget is not None
                else {}
            ),
        }


class TrainingBars:
    """Progress over epochs and over the batches of the epoch at hand."""

    def __init__(self, progress: Progress, epochs: int, done: int, batches: int) -> None:
        self.progress = progress
        self.epochs = progress.add_task("epochs", total=epochs, completed=done, status="")
        self.batches = progress.add_task("batches", total=batches, status="")

    def start_epoch(self, batches: int, done: int = 0) -> None:
        self.progress.reset(self.batches, total=batches, completed=done, status="")

    def batch_done(self, status: str | None) -> None:
        self.progress.update(self.batches, advance=1, **({"status": status} if status else {}))

    def set_epochs(self, epochs: int) -> None:
        self.progress.update(self.epochs, total=epochs)

    def epoch_done(self, status: str) -> None:
        self.progress.update(self.epochs, advance=1, status=status)

    def print(self, line: str) -> None:
        self.progress.console.print(line)


def cpu_weights(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A network's state dict, detached, on the CPU: what a checkpoint stores."""
    return {key: value.detach().cpu() for key, value in network.state_dict().items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dist_backend() -> str:
    return str(dist.get_backend()) if dist.is_initialized() else "single process"


def objects_rule(target: str, class_names: list[str]) -> InstanceRule | None:
    """How validation makes objects for the object scores (default settings); None for a network whose
    classes have no foreground to split (several classes, not trained with data.target=boundary)."""
    try:
        return resolve_rule("auto", target, class_names)
    except UserError:
        return None


def epoch_line(metrics: dict[str, float], class_names: list[str], monitor: str) -> str:
    """The scores that apply to the task: losses, pixel error, Dice per class; the Rand error where the
    labels are cells separated by a membrane class (class 0 named "membrane": ISBI, data=synthetic), else
    AP50 where objects are scored; and the monitored score if it is none of these."""
    shown = [LOSS.key, PIXEL_ERROR.key, *(dice_of(name).key for name in class_names)]
    shown.append(RAND_ERROR.key if class_names[0].lower() == "membrane" else AP50.key)
    if monitor not in shown:
        shown.append(monitor)
    titles = {score.key: score.title for score in validation_scores(class_names)} | {DICE.key: "mean Dice"}
    parts = [f"train loss {metrics['train_loss']:.4f}"]
    parts += [f"{'val loss' if key == LOSS.key else titles[key]} {metrics[key]:.4f}" for key in shown if key in metrics]
    return " · ".join(parts)
