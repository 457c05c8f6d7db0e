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

from unetseg.config import LossName, TrainConfig
from unetseg.console import console, metrics_table, progress_bars
from unetseg.data.dataset import LabelledImages, SegmentationDataset, load_splits
from unetseg.data.normalize import PercentileNormalizer
from unetseg.distributed import all_reduce_sum, broadcast_buffers, current_world
from unetseg.engine.checkpoint import Checkpoint, save_checkpoint
from unetseg.engine.device import resolve_device
from unetseg.engine.losses import compute_loss
from unetseg.engine.metrics import ConfusionMatrix, predict_classes
from unetseg.engine.optim import build_optimizer
from unetseg.engine.precision import FastPath, choose_fast_path, maybe_compile
from unetseg.errors import UserError
from unetseg.model import ModelSpec, count_parameters

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    best_epoch: int
    best: dict[str, float]
    last: dict[str, float]
    epochs: int
    parameters: int
    wall_time_s: float
    best_checkpoint: Path
    last_checkpoint: Path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate(
    network: torch.nn.Module,
    items: LabelledImages,
    loss_name: LossName,
    threshold: float,
    class_names: list[str],
    fast: FastPath,
) -> dict[str, float]:
    """Validation loss and metrics over every image (one at a time, so any size works)."""
    network.eval()
    world = current_world()
    confusion = ConfusionMatrix(max(2, len(class_names)))
    total_loss = torch.zeros((), device=fast.device)
    with torch.inference_mode():  # under torchrun each rank takes every world.size-th image
        for image, label in zip(
            items.images[world.rank :: world.size], items.labels[world.rank :: world.size], strict=True
        ):
            x = fast.prepare_input(torch.from_numpy(image)[None])
            y = torch.from_numpy(label.astype(np.int64))[None].to(fast.device)
            with fast.autocast():
                logits = network(x)
            total_loss += compute_loss(loss_name, logits, y)
            confusion.update(predict_classes(logits, threshold), y)
    if world.distributed:  # sum pixel counts and losses over ranks: every rank gets the same metrics
        confusion.counts = all_reduce_sum(confusion.counts.to(fast.device)).cpu()
        all_reduce_sum(total_loss)
    return {"val_loss": (total_loss / len(items)).item(), **confusion.scores(class_names)}


def dist_backend() -> str:
    return str(dist.get_backend()) if dist.is_initialized() else "single process"


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

    def _loader(self, train: LabelledImages) -> DataLoader:
        t, aug = self.cfg.trainer, self.cfg.data.augment
        if t.batch_size > 1 and not train.has_uniform_size():
            raise UserError("training images have different sizes, so they cannot be batched: use trainer.batch_size=1")
        smallest = min(min(image.shape[1:]) for image in train.images)
        bottleneck = -(-smallest // 2**self.spec.depth)  # ceil: the net pads to a multiple of 2**depth
        if bottleneck * bottleneck * t.batch_size < 2:
            raise UserError(
                f"images of {smallest} px are too small for model.depth={self.spec.depth} with batch size "
                f"{t.batch_size}: the deepest layer would see a single pixel, which BatchNorm cannot train on; "
                "lower model.depth, raise trainer.batch_size or use larger images"
            )
        dataset = SegmentationDataset(train, seed=t.seed, flip=aug.flip, rotate90=aug.rotate90)
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
            generator=torch.Generator().manual_seed(t.seed),
            pin_memory=on_gpu,
            # A trailing 1-image batch skews BatchNorm statistics; never drop a rank's only batch.
            drop_last=(len(sampler) if sampler is not None else len(dataset)) > t.batch_size,
        )

    def _checkpoint(self, model: torch.nn.Module, epoch: int, metrics: dict[str, float]) -> Checkpoint:
        return Checkpoint(
            state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            model=self.spec,
            normalization=self.normalizer,
            class_names=self.class_names,
            threshold=self.cfg.trainer.threshold,
            epoch=epoch,
            metrics=metrics,
        )

    def fit(self) -> TrainResult:
        cfg, t = self.cfg, self.cfg.trainer
        started = time.perf_counter()
        seed_everything(t.seed)
        train_items, val_items = load_splits(cfg.data, cfg.model.in_channels, cfg.model.num_classes, self.normalizer)
        loader = self._loader(train_items)
        model = self.spec.build()
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
        example = self.fast.prepare_input(torch.from_numpy(train_items.images[0])[None])
        network = maybe_compile(model, t.compile, example, self.fast)
        evaluated = network  # validation runs unwrapped: ranks see different image counts, DDP needs lockstep
        if self.world.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            network = DistributedDataParallel(network, device_ids=device_ids)
        ranks = f" · {self.world.size} processes ({dist_backend()})" if self.world.distributed else ""
        console.print(f"[bold]{self.fast.describe()}{ranks}[/]")
        log.info("%s%s", self.fast.describe(), ranks)
        console.print(
            f"[bold]data[/]: {len(train_items)} training, {len(val_items)} validation images · "
            f"[bold]model[/]: U-Net {self.spec.upsampling}, {parameters:,} parameters"
        )

        best: dict[str, float] = {}
        best_epoch = 0
        last: dict[str, float] = {}
        with progress_bars() as progress:
            epochs_task = progress.add_task("epochs", total=t.epochs, status="")
            batches_task = progress.add_task("batches", total=len(loader), status="")
            for epoch in range(1, t.epochs + 1):
                epoch_started = time.perf_counter()
                loader.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
                if isinstance(loader.sampler, DistributedSampler):
                    loader.sampler.set_epoch(epoch)
                progress.reset(batches_task, total=len(loader), status="")
                train_loss = self._train_epoch(network, optimizer, scaler, loader, progress, batches_task)
                # Each rank's last forward pass updated its own BatchNorm running statistics: validate (and
                # save) rank 0's, on every rank.
                broadcast_buffers(model)
                last = {
                    "train_loss": train_loss,
                    **evaluate(evaluated, val_items, t.loss, t.threshold, self.class_names, self.fast),
                }
                improved = not best or last["dice"] > best["dice"]
                if improved:
                    best, best_epoch = last, epoch
                if self.world.is_main:
                    checkpoint = self._checkpoint(model, epoch, last)
                    if improved:
                        save_checkpoint(checkpoint, self.checkpoint_dir / "best.pt")
                    save_checkpoint(checkpoint, self.checkpoint_dir / "last.pt")
                    self._append_metrics(epoch, last, time.perf_counter() - epoch_started, improved)
                status = f"val Dice {last['dice']:.4f} (best {best['dice']:.4f} @ {best_epoch})"
                progress.update(epochs_task, advance=1, status=status)
                line = (
                    f"epoch {epoch}/{t.epochs} · train loss {train_loss:.4f} · val loss {last['val_loss']:.4f} · "
                    + " · ".join(f"Dice {n} {last[f'dice_{n}']:.4f}" for n in self.class_names)
                )
                if self.world.is_main:
                    log.info("%s%s", line, " (best)" if improved else "")
                progress.console.print(line + (" · [green]best[/]" if improved else ""))
        console.print(
            metrics_table(
                "validation metrics",
                [(f"best (epoch {best_epoch})", best), (f"last (epoch {t.epochs})", last)],
                self.class_names,
            )
        )
        return TrainResult(
            best_epoch=best_epoch,
            best=best,
            last=last,
            epochs=t.epochs,
            parameters=parameters,
            wall_time_s=time.perf_counter() - started,
            best_checkpoint=self.checkpoint_dir / "best.pt",
            last_checkpoint=self.checkpoint_dir / "last.pt",
        )

    def _train_epoch(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        loader: DataLoader,
        progress: Any,
        task: Any,
    ) -> float:
        network.train()
        loss_sum = torch.zeros((), device=self.device)
        for step, (images, labels) in enumerate(loader, start=1):
            images = self.fast.prepare_input(images)
            labels = labels.to(self.device, non_blocking=True)
            with self.fast.autocast():
                logits = network(images)
            loss = compute_loss(self.cfg.trainer.loss, logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
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
