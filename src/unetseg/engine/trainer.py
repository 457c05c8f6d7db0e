"""The training loop: one place that reads as a story — data, model, optimiser, epochs, checkpoints."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from unetseg.atomic import copy_atomic
from unetseg.config import LossName, TrainConfig
from unetseg.console import console, metrics_table, progress_bars
from unetseg.data.border_weights import border_weight_map
from unetseg.data.dataset import LabelledImages, SegmentationDataset, load_splits
from unetseg.data.normalize import PercentileNormalizer
from unetseg.distributed import all_reduce_sum, broadcast_buffers, current_world
from unetseg.engine.checkpoint import Checkpoint, load_checkpoint, newest_checkpoint, save_checkpoint
from unetseg.engine.device import resolve_device
from unetseg.engine.losses import WEIGHTED, compute_loss
from unetseg.engine.metrics import predict_classes
from unetseg.engine.monitor import Monitor, lower_is_better
from unetseg.engine.optim import build_optimizer
from unetseg.engine.precision import FastPath, choose_fast_path, maybe_compile
from unetseg.engine.schedule import Schedule, build_schedule
from unetseg.engine.scores import ScoreBoard
from unetseg.errors import UserError
from unetseg.model import ModelSpec, count_parameters
from unetseg.paths import user_path

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
    best_checkpoint: Path
    last_checkpoint: Path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def validate(
    network: torch.nn.Module,
    items: LabelledImages,
    loss_name: LossName,
    threshold: float,
    class_names: list[str],
    fast: FastPath,
) -> dict[str, float]:
    """Validation loss and every score of unetseg evaluate, over whole images (one at a time, so any
    size works). The weighted losses are reported unweighted: validation images carry no weight map."""
    network.eval()
    world = current_world()
    board = ScoreBoard(class_names)
    total_loss = torch.zeros((), device=fast.device)
    with torch.inference_mode():  # under torchrun each rank takes every world.size-th image
        for name, image, label in list(zip(items.names, items.images, items.labels, strict=True))[
            world.rank :: world.size
        ]:
            x = fast.prepare_input(torch.from_numpy(image)[None])
            y = torch.from_numpy(label.astype(np.int64))[None].to(fast.device)
            with fast.autocast():
                logits = network(x)
            total_loss += compute_loss(loss_name, logits, y)
            board.add(name, predict_classes(logits, threshold)[0].to(torch.uint8).cpu().numpy(), label)
    board.reduce_across_ranks(fast.device)  # every rank gets the same scores
    all_reduce_sum(total_loss)
    return {"val_loss": (total_loss / len(items)).item(), **board.summary()}


def dist_backend() -> str:
    return str(dist.get_backend()) if dist.is_initialized() else "single process"


def training_state(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    schedule: Schedule,
    monitor: Monitor,
    best: dict[str, float],
) -> dict[str, Any]:
    """Everything besides the weights that a resumed run needs to continue exactly (tensors and
    primitives only, so last.pt still loads with weights_only=True)."""
    return {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "schedule": schedule.state_dict(),
        "monitor": monitor.state_dict(),
        "best": dict(best),
        "torch_rng": torch.get_rng_state(),
    }


def epoch_line(metrics: dict[str, float], class_names: list[str]) -> str:
    parts = [f"train loss {metrics['train_loss']:.4f}", f"val loss {metrics['val_loss']:.4f}"]
    parts += [f"pixel error {metrics['pixel_error']:.4f}"]
    parts += [f"Dice {name} {metrics[f'dice_{name}']:.4f}" for name in class_names]
    parts += [f"Rand error {metrics['rand_error']:.4f}"]
    return " · ".join(parts)


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.checkpoint_dir = run_dir / "checkpoints"
        self.metrics_path = run_dir / "metrics.jsonl"
        self.world = current_world()
        device = resolve_device(cfg.trainer.device)
        if device.type == "cuda" and self.world.distributed:
            device = torch.device("cuda", self.world.local_rank)
        self.fast = choose_fast_path(device, cfg.trainer.precision.value, cfg.trainer.channels_last)
        self.device = self.fast.device
        self.spec = ModelSpec(
            upsampling=cfg.model.upsampling.value,
            in_channels=cfg.model.in_channels,
            num_classes=cfg.model.num_classes,
            base_channels=cfg.model.base_channels,
            depth=cfg.model.depth,
        )
        self.normalizer = PercentileNormalizer(
            cfg.data.normalization.low_percentile, cfg.data.normalization.high_percentile
        )
        self.class_names = list(cfg.data.class_names)
        self.shuffle_generator = torch.Generator()
        self.resumed_from: Path | None = None

    def _loader(self, train: LabelledImages) -> DataLoader:
        t, d = self.cfg.trainer, self.cfg.data
        if t.batch_size > 1 and d.patch_size is None and not train.has_uniform_size():
            raise UserError(
                "training images have different sizes, so they cannot be batched: use trainer.batch_size=1 "
                "or train on crops of one size (data.patch_size=256)"
            )
        smallest = d.patch_size or min(min(image.shape[1:]) for image in train.images)
        bottleneck = -(-smallest // 2**self.spec.depth)  # ceil: the net pads to a multiple of 2**depth
        if bottleneck * bottleneck * t.batch_size < 2:
            raise UserError(
                f"images of {smallest} px are too small for model.depth={self.spec.depth} with batch size "
                f"{t.batch_size}: the deepest layer would see a single pixel, which BatchNorm cannot train on; "
                "lower model.depth, raise trainer.batch_size or use larger images"
            )
        dataset = SegmentationDataset(train, t.seed, d.augment, d.patch_size, d.samples_per_epoch)
        # Under torchrun each rank trains on its share of every epoch (trainer.batch_size per rank).
        sampler = (
            DistributedSampler(dataset, self.world.size, self.world.rank, shuffle=True, seed=t.seed)
            if self.world.distributed
            else None
        )
        on_gpu = self.device.type == "cuda"
        # The data is already decoded in memory; worker processes only pay off when they feed a GPU.
        workers = t.workers if t.workers is not None else (min(4, os.cpu_count() or 1) if on_gpu else 0)
        return DataLoader(
            dataset,
            batch_size=t.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            generator=self.shuffle_generator,
            pin_memory=on_gpu,
            # A trailing 1-image batch skews BatchNorm statistics; never drop a rank's only batch.
            drop_last=(len(sampler) if sampler is not None else len(dataset)) > t.batch_size,
        )

    def _start_epoch(self, loader: DataLoader, epoch: int) -> None:
        """Shuffling and augmentation depend on (seed, epoch) only, so a resumed run repeats them."""
        loader.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        self.shuffle_generator.manual_seed(self.cfg.trainer.seed * 1_000_003 + epoch)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)

    def _checkpoint(
        self,
        model: torch.nn.Module,
        epoch: int,
        metrics: dict[str, float],
        training_state: dict[str, Any] | None = None,
    ) -> Checkpoint:
        return Checkpoint(
            state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            model=self.spec,
            normalization=self.normalizer,
            class_names=self.class_names,
            threshold=self.cfg.trainer.threshold,
            epoch=epoch,
            metrics=metrics,
            training_state=training_state,
        )

    def _with_loss_weights(self, items: LabelledImages) -> LabelledImages:
        """Attach the border weight map to each training label when the loss needs it (computed once)."""
        t = self.cfg.trainer
        if t.loss not in WEIGHTED:
            return items
        items.weights = [
            border_weight_map(label, self.spec.num_classes, t.border_weight, t.border_sigma, t.class_balance)
            for label in items.labels
        ]
        return items

    def fit(self) -> TrainResult:
        cfg, t = self.cfg, self.cfg.trainer
        started = time.perf_counter()
        seed_everything(t.seed)
        train_items, val_items = load_splits(cfg.data, cfg.model.in_channels, cfg.model.num_classes, self.normalizer)
        train_items = self._with_loss_weights(train_items)
        loader = self._loader(train_items)
        model = self.spec.build()
        resumed = self._resume_source()
        if resumed is not None:
            model.load_state_dict(resumed.state_dict)
        if t.sync_batchnorm and self.world.distributed:
            if self.device.type != "cuda":
                raise UserError(
                    "trainer.sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only); "
                    "set it to false on CPUs"
                )
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = self.fast.prepare_model(model)
        parameters = count_parameters(model)
        optimizer = build_optimizer(model.parameters(), cfg.optim)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.fast.needs_grad_scaler)
        schedule = build_schedule(optimizer, cfg.schedule, t.epochs * len(loader), lower_is_better(t.monitor))
        monitor = Monitor(t.monitor, t.monitor_ema)
        first_epoch, best = 1, {}
        if resumed is not None:
            monitor, best, first_epoch = self._restore(resumed, optimizer, scaler, schedule)
        example = self.fast.prepare_input(torch.from_numpy(train_items.images[0])[None])
        network = maybe_compile(model, t.compile, example, self.fast)
        evaluated = network  # validation runs unwrapped: ranks see different image counts, DDP needs lockstep
        if self.world.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            network = DistributedDataParallel(network, device_ids=device_ids)
        ranks = f" · {self.world.size} processes ({dist_backend()})" if self.world.distributed else ""
        console.print(f"[bold]{self.fast.describe()}{ranks}[/]")
        log.info("%s%s", self.fast.describe(), ranks)
        patches = f" ({cfg.data.patch_size}×{cfg.data.patch_size} crops)" if cfg.data.patch_size else ""
        patches += f", {len(loader.dataset)} samples per epoch" if cfg.data.samples_per_epoch else ""  # type: ignore[arg-type]
        console.print(
            f"[bold]data[/]: {len(train_items)} training{patches}, {len(val_items)} validation images · "
            f"[bold]model[/]: U-Net {self.spec.upsampling}, {parameters:,} parameters · "
            f"[bold]best by[/]: {monitor.key}{f' (EMA {monitor.ema})' if monitor.ema else ''}"
        )

        last: dict[str, float] = {}
        epoch = first_epoch - 1
        stopped_early = False
        with progress_bars() as progress:
            epochs_task = progress.add_task("epochs", total=t.epochs, completed=epoch, status="")
            batches_task = progress.add_task("batches", total=len(loader), status="")
            for epoch in range(first_epoch, t.epochs + 1):
                epoch_started = time.perf_counter()
                self._start_epoch(loader, epoch)
                progress.reset(batches_task, total=len(loader), status="")
                train_loss = self._train_epoch(network, optimizer, scaler, schedule, loader, progress, batches_task)
                # Each rank's last forward pass updated its own BatchNorm running statistics: validate (and
                # save) rank 0's, on every rank.
                broadcast_buffers(model)
                last = {
                    "train_loss": train_loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    **validate(evaluated, val_items, t.loss, t.threshold, self.class_names, self.fast),
                }
                improved = monitor.update(last, epoch)
                schedule.after_validation(last[monitor.key])
                if improved:
                    best = last
                if self.world.is_main:
                    if improved:
                        save_checkpoint(self._checkpoint(model, epoch, last), self.checkpoint_dir / "best.pt")
                    state = training_state(optimizer, scaler, schedule, monitor, best)
                    save_checkpoint(self._checkpoint(model, epoch, last, state), self.checkpoint_dir / "last.pt")
                    self._append_metrics(epoch, last, time.perf_counter() - epoch_started, improved)
                best_label = "best EMA" if monitor.ema else "best"
                status = f"{monitor.key} {last[monitor.key]:.4f} ({best_label} {monitor.best:.4f}"
                status += f" @ {monitor.best_epoch})"
                progress.update(epochs_task, advance=1, status=status)
                line = f"epoch {epoch}/{t.epochs} · {epoch_line(last, self.class_names)}"
                if self.world.is_main:
                    log.info("%s%s", line, " (best)" if improved else "")
                progress.console.print(line + (" · [green]best[/]" if improved else ""))
                if monitor.should_stop(t.early_stopping):
                    stopped_early = True
                    console.print(
                        f"early stopping: {monitor.key} has not improved for {t.early_stopping} epochs "
                        f"(best at epoch {monitor.best_epoch})"
                    )
                    break
        console.print(
            metrics_table(
                "validation scores",
                [(f"best (epoch {monitor.best_epoch})", best), (f"last (epoch {epoch})", last)],
                self.class_names,
            )
        )
        return TrainResult(
            best_epoch=monitor.best_epoch,
            best=best,
            last=last,
            epochs=epoch,
            stopped_early=stopped_early,
            parameters=parameters,
            wall_time_s=time.perf_counter() - started,
            best_checkpoint=self.checkpoint_dir / "best.pt",
            last_checkpoint=self.checkpoint_dir / "last.pt",
        )

    def _resume_source(self) -> Checkpoint | None:
        """The last.pt that trainer.resume names (auto: the newest under outputs/), checked against this run."""
        t = self.cfg.trainer
        if t.resume is None:
            return None
        if t.resume == "auto":
            path = newest_checkpoint(user_path("outputs"), "last.pt", exclude=self.run_dir)
        else:
            path = user_path(t.resume)
        checkpoint = load_checkpoint(path)
        if checkpoint.training_state is None:
            raise UserError(f"{path} has no training state to resume from: use the run's checkpoints/last.pt")
        if checkpoint.model != self.spec:
            raise UserError(
                f"{path} holds a different network ({checkpoint.model}) than this config ({self.spec}): "
                "resume with the model settings of that run"
            )
        if checkpoint.epoch >= t.epochs:
            raise UserError(
                f"{path} has already trained {checkpoint.epoch} of trainer.epochs={t.epochs}: "
                f"raise trainer.epochs above {checkpoint.epoch} to train on"
            )
        self.resumed_from = path
        return checkpoint

    def _restore(
        self, resumed: Checkpoint, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, schedule: Schedule
    ) -> tuple[Monitor, dict[str, float], int]:
        """Load the optimiser, scaler, schedule and RNG state, and carry over the earlier run's history
        (metrics.jsonl and best.pt) so this run directory tells the whole story."""
        state = resumed.training_state
        assert state is not None
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        if self.world.is_main:
            source_run = self.resumed_from.parent.parent
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            for source, target in (
                (self.resumed_from.parent / "best.pt", self.checkpoint_dir / "best.pt"),
                (source_run / "metrics.jsonl", self.metrics_path),
            ):
                if source.is_file():
                    copy_atomic(source, target)
        console.print(f"resuming from {self.resumed_from} after epoch {resumed.epoch}")
        return Monitor.from_state(state["monitor"]), dict(state["best"]), resumed.epoch + 1

    def _train_epoch(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        schedule: Schedule,
        loader: DataLoader,
        progress: Any,
        task: Any,
    ) -> float:
        network.train()
        loss_sum = torch.zeros((), device=self.device)
        for step, (images, labels, weights) in enumerate(loader, start=1):
            images = self.fast.prepare_input(images)
            labels = labels.to(self.device, non_blocking=True)
            weights = weights.to(self.device, non_blocking=True) if weights.numel() else None
            with self.fast.autocast():
                logits = network(images)
            loss = compute_loss(self.cfg.trainer.loss, logits, labels, weights)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.after_step()
            loss_sum += loss.detach()
            # Reading the loss synchronises with the device: only every 10 steps, for the progress bar.
            status = f"loss {loss_sum.item() / step:.4f}" if step % 10 == 0 or step == len(loader) else None
            progress.update(task, advance=1, **({"status": status} if status else {}))
        # One reduction per epoch: the mean training loss over every rank's steps.
        totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(len(loader)), device=self.device)]))
        return (totals[0] / totals[1].clamp(min=1)).item()

    def _append_metrics(self, epoch: int, metrics: dict[str, float], seconds: float, best: bool) -> None:
        record = {
            "epoch": epoch,
            **{k: round(v, 6) for k, v in metrics.items()},
            "epoch_time_s": round(seconds, 3),
            "best": best,
        }
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
