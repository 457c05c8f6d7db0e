"""The training DataLoader: batching checks, the per-rank sampler under torchrun, and worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

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
    smallest = d.patch_size or min(min(shape[1:]) for shape in train.shapes())
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
    shares = (
        DistributedSampler(dataset, world.size, world.rank, shuffle=True, seed=t.seed) if world.distributed else None
    )
    on_gpu = device.type == "cuda"
    workers = t.workers if t.workers is not None else default_workers(on_gpu, train.entries is not None)
    return DataLoader(
        dataset,
        batch_size=t.batch_size,
        sampler=EpochOrder(len(dataset), shares),
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=generator,
        pin_memory=on_gpu,
        # A trailing 1-image batch skews BatchNorm statistics; never drop a rank's only batch.
        drop_last=(len(shares) if shares is not None else len(dataset)) > t.batch_size,
    )


def default_workers(on_gpu: bool, from_disk: bool) -> int:
    """trainer.workers=null: 4 worker processes feeding a GPU; on a CPU none for data in memory (the patch costs
    far less than the step, and a worker would take a core from it) and one for the disk cache, so reading a
    patch from disk overlaps the step, where the CPU has a core to spare for it."""
    if on_gpu:
        return min(4, os.cpu_count() or 1)
    return 1 if from_disk and (os.cpu_count() or 1) > 2 else 0


class EpochOrder(Sampler[int]):
    """The order of an epoch's samples: a permutation that depends on (seed, epoch) alone (or, under torchrun,
    this rank's share), without the first ``skip`` indices: a run resumed in the middle of an epoch goes on with
    the batch after the last one it trained on (batches are consecutive indices, so skipping steps × batch
    size indices skips exactly those steps).

    The permutation has a generator of its own: the DataLoader draws its workers' base seed from the loader's
    generator only when a (persistent) worker pool starts, which a resumed run does in another epoch.
    """

    def __init__(self, size: int, shares: DistributedSampler | None = None) -> None:
        self.size, self.shares = size, shares
        self.seed, self.skip = 0, 0

    def __iter__(self) -> Iterator[int]:
        if self.shares is not None:
            indices = list(self.shares)
        else:
            generator = torch.Generator().manual_seed(self.seed)
            # The draw the DataLoader made from the same generator before the permutation had its own: orders
            # stay those of earlier versions (whose checkpoints resume to the same numbers).
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            indices = torch.randperm(self.size, generator=generator).tolist()
        skip, self.skip = self.skip, 0  # only once: the next epoch is whole
        return iter(indices[skip:])

    def __len__(self) -> int:
        return len(self.shares) if self.shares is not None else self.size


def start_epoch(loader: DataLoader, generator: torch.Generator, seed: int, epoch: int, skip_steps: int = 0) -> None:
    """Shuffling and augmentation depend on (seed, epoch) only, so a resumed run repeats them; ``skip_steps``:
    the steps of this epoch that a run interrupted in its middle has already trained."""
    loader.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
    generator.manual_seed(seed * 1_000_003 + epoch)  # the workers' base seed
    order = loader.sampler
    assert isinstance(order, EpochOrder)
    order.seed = seed * 1_000_003 + epoch
    if order.shares is not None:
        order.shares.set_epoch(epoch)
    order.skip = skip_steps * (loader.batch_size or 1)
