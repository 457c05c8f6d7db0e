"""What makes two trainings "the same experiment", so that a resume continues only its own run.

``last.pt`` stores the fingerprint of the run that wrote it: the composed config as flat ``key: value`` text,
apart from the keys a resumed run may change (:data:`FREE_KEYS`), and a digest of the training and validation
data as decoded (names, sizes and every pixel). A resume whose fingerprint differs is refused, naming the
first key that differs, or the data.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from unetseg.config import TrainConfig
from unetseg.data.dataset import LabelledImages
from unetseg.tracking.loggers import flatten

# Keys a resumed run may set differently: how long it trains and when it stops early, what it resumes, where
# it runs, keeps and reports, and how it is watched. data.root and data.val_root are left out because the
# data digest compares the data itself (the same folder reached by another path is the same data), and
# data.max_pixels because it is a guard, not a setting of the experiment. trainer.threshold is not free: it
# decides which epoch validation calls best. Nor is trainer.init_from: the weights a run started from are part of
# its experiment. A resumed run cannot give it (resume and init_from exclude each other), so it takes it over from
# the last.pt it continues (with_initialisation), and trainer.resume=auto passes over fine-tuning runs.
FREE_KEYS = frozenset(
    {
        "trainer.epochs",
        "trainer.time_budget",
        "trainer.early_stopping",
        "trainer.save_last",
        "trainer.device",
        "trainer.resume",
        "trainer.workers",
        "trainer.loggers",
        "trainer.log_every_n_steps",
        "trainer.mlflow_tracking_uri",
        "trainer.mlflow_experiment",
        "trainer.report_images",
        "runs_root",
        "verbose",
        "data.root",
        "data.val_root",
        "data.max_pixels",
        "data.in_memory",
        "data.memory_share",
        "data.cache_dir",
    }
)


def config_fingerprint(cfg: TrainConfig) -> dict[str, str]:
    """The composed config as ``dotted.key: value`` text, without :data:`FREE_KEYS`."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    assert isinstance(tree, dict)
    return {key: str(value) for key, value in sorted(flatten(tree).items()) if key not in FREE_KEYS}  # type: ignore[arg-type]


def data_digest(*parts: LabelledImages) -> str:
    """A digest of the data: each item's digest as it was decoded (its name, pixels, normalisation and class
    ids: unetseg.data.decoding.item_digest), the same for data in memory and in the disk cache; items made
    without one (in tests) are hashed here as they are held."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        if part.digests is not None:
            digest.update("\n".join(part.digests).encode())
            continue
        for name, image, label in zip(part.names, part.images, part.labels, strict=True):
            digest.update(f"{name}|{image.shape}|{image.dtype}|{label.shape}|".encode())
            digest.update(np.ascontiguousarray(image).data)
            digest.update(np.ascontiguousarray(label).data)
    return digest.hexdigest()


def fingerprint(cfg: TrainConfig, train: LabelledImages, val: LabelledImages) -> dict[str, Any]:
    return {"config": config_fingerprint(cfg), "data": data_digest(train, val)}


INIT_FROM = "trainer.init_from"


def initialised_from(stored: dict[str, Any]) -> str | None:
    """The trainer.init_from a fingerprint records (None: the run started from random weights)."""
    config = stored.get("config")
    value = config.get(INIT_FROM) if isinstance(config, dict) else None
    return None if value in (None, "None") else str(value)


def with_initialisation(current: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """``current`` (a resumed run's fingerprint, without trainer.init_from) recording the start of the run it
    continues, as ``stored`` holds it."""
    config = stored.get("config")
    if not isinstance(config, dict) or INIT_FROM not in config:
        return current
    return {**current, "config": {**current["config"], INIT_FROM: config[INIT_FROM]}}


def difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """What differs between a checkpoint's fingerprint and this run's, in words; None if nothing does."""
    before, now = stored.get("config", {}), current["config"]
    # Keys that only one side knows came or went with a version of unetseg: not a difference of the experiment.
    # A chosen option (optim.name) explains the keys it brings along (optim.betas): name it first.
    differing = sorted(
        (key for key in set(before) & set(now) if before[key] != now[key]),
        key=lambda key: (not key.endswith(".name"), key),
    )
    if differing:
        shown = [f"{key}={before[key]} there, {now[key]} here" for key in differing[:2]]
        more = f" and {len(differing) - 2} more" if len(differing) > 2 else ""
        return "; ".join(shown) + more
    if stored.get("data") != current["data"]:
        return "other data (the images or labels differ)"
    return None


# What last.pt's training state holds, and the type of each part (fingerprint and epoch_progress: optional).
_STATE_PARTS: dict[str, type] = {
    "optimizer": dict,
    "scaler": dict,
    "schedule": dict,
    "monitor": dict,
    "best": dict,
    "torch_rng": torch.Tensor,
}


def training_state_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's training state (an edited or damaged file), or None."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a dict"
    for key, kind in _STATE_PARTS.items():
        if not isinstance(state.get(key), kind):
            return f"no {key}" if key not in state else f"{key} is a {type(state[key]).__name__}"
    stored = state.get("fingerprint")
    if stored is not None and not (
        isinstance(stored, dict) and isinstance(stored.get("config"), dict) and isinstance(stored.get("data"), str)
    ):
        return "its fingerprint is not a config and a data digest"
    weights, updates = state.get("weights"), state.get("weight_updates")
    if weights is not None and not (
        isinstance(weights, dict)
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in weights.items())
        and all(bool(torch.isfinite(value).all()) for value in weights.values() if value.is_floating_point())
        and isinstance(updates, int)
        and updates >= 0
    ):
        return "its training weights (trainer.weight_ema) are not tensors by name and a step count"
    progress = state.get("epoch_progress")
    if progress is not None:
        steps, loss_sum = (progress.get("steps"), progress.get("loss_sum")) if isinstance(progress, dict) else (0, 0)
        if not (isinstance(steps, int) and steps >= 0 and isinstance(loss_sum, float) and math.isfinite(loss_sum)):
            return "its position inside the epoch is not a step count and a finite loss"
    return None
