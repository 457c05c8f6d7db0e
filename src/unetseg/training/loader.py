"""The training DataLoader: batching checks, the per-rank sampler under torchrun, and worker processes."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, DistributedSampler

from unetseg.config import TrainConfig
from unetseg.data.dataset import LabelledImages, SegmentationDataset
from unetseg.runtime.distributed import World
from unetseg.runtime.errors import UserError


def training_loader(
    train: LabelledImages, cfg: TrainConfig, world: World, device: torch.device, generator: torch.Generator
) -> DataLoader:
    """Batches of (augmented) training samples; ``generator`` shuffles (seeded per epoch by the trainer)."""
    t, d = cfg.trainer, cfg.data
    if t.batch_size > 1 and d.patch_size is None and not train.has_uniform_size():
        raise UserError(
            "training images have different sizes, so they cannot be batched: use trainer.batch_size=1 "
            "or train on crops of one size (data.patch_size=256)"
        )
    smallest = d.patch_size or min(min(image.shape[1:]) for image in train.images)
    depth = cfg.model.depth
    bottleneck = -(-smallest // 2**depth)  # ceil: the net pads to a multiple of 2**depth
    if bottleneck * bottleneck * t.batch_size < 2:
        raise UserError(
            f"images of {smallest} px are too small for model.depth={depth} with batch size "
            f"{t.batch_size}: the deepest layer would see a single pixel, which BatchNorm cannot train on; "
            "lower model.depth, raise trainer.batch_size or use larger images"
        )
    dataset = SegmentationDataset(train, t.seed, d.augment, d.patch_size, d.samples_per_epoch)
    # Under torchrun each rank trains on its share of every epoch (trainer.batch_size per rank).
    sampler = None
    if world.distributed:
        sampler = DistributedSampler(dataset, world.size, world.rank, shuffle=True, seed=t.seed)
    on_gpu = device.type == "cuda"
    # The data is already decoded in memory; worker processes only pay off when they feed a GPU.
    workers = t.workers if t.workers is not None else (min(4, os.cpu_count() or 1) if on_gpu else 0)
    return DataLoader(
        dataset,
        batch_size=t.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=generator,
        pin_memory=on_gpu,
        # A trailing 1-image batch skews BatchNorm statistics; never drop a rank's only batch.
        drop_last=(len(sampler) if sampler is not None else len(dataset)) > t.batch_size,
    )


def start_epoch(loader: DataLoader, generator: torch.Generator, seed: int, epoch: int) -> None:
    """Shuffling and augmentation depend on (seed, epoch) only, so a resumed run repeats them."""
    loader.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
    generator.manual_seed(seed * 1_000_003 + epoch)
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
