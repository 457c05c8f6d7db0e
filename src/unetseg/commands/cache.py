"""`unetseg cache`: decode a training folder into the disk cache ahead of time (unetseg.data.cache), with
train's own settings, so the entries are those `unetseg train` with the same settings reads."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from unetseg.config import TrainConfig
from unetseg.data.dataset import data_cache, label_rule, load_splits
from unetseg.data.normalize import PercentileNormalizer
from unetseg.data.pairing import with_default_root
from unetseg.runner import run_command
from unetseg.runtime.amounts import in_units
from unetseg.runtime.console import console
from unetseg.runtime.interrupts import interrupts_between_steps
from unetseg.training.border_weights import loss_weights
from unetseg.training.losses import WEIGHTED


def fill_cache(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    data, _ = with_default_root(dataclasses.replace(cfg.data, in_memory="false"))  # as train finds the folder
    cache = data_cache(data)
    normalization = data.normalization
    normalizer = PercentileNormalizer(normalization.low_percentile, normalization.high_percentile)
    weighted = cfg.trainer.loss in WEIGHTED
    rule = label_rule(data, cfg.model.num_classes)
    with interrupts_between_steps():  # Ctrl-C stops after the entry at hand, which is kept
        train, val = load_splits(data, cfg.model.in_channels, rule, normalizer, weighted=weighted, cache=cache)
        if weighted:  # the training part's loss weights, as training computes them
            weights = loss_weights(cfg)
            train.with_weights(weights.compute, weights.key, cache)
    entries, size = cache.size()
    seconds = time.perf_counter() - started
    images = len(train) + len(val)
    new = cache.decoded  # by this command: another one filling the same cache at once decodes the rest
    console.print(
        f"cached {images} image(s) of data.root={data.root} ({len(train)} training, {len(val)} validation"
        f"{', with loss weights' if weighted else ''}) in {seconds:.1f} s: {new} decoded now, {images - new} already "
        f"cached · the cache {cache.root} holds {entries} entries, {in_units(size)} "
        f"(clear it with: rm -rf {cache.root})"
    )
    return {"cache": str(cache.root), "images": images, "decoded": new, "entries": entries, "bytes": size}


def main(argv: list[str]) -> None:
    run_command("cache", fill_cache, argv)
