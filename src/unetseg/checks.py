"""Range checks that a type cannot express, one per command; each message names the key and the fix.

The runner calls the command's check on every variant of the overrides before Hydra makes a run directory
(unetseg.runner.preflight), and again on the config a job runs with.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

from unetseg.config import (
    DataSource,
    EvaluateConfig,
    ExportConfig,
    InferenceConfig,
    PredictConfig,
    SynthesizeConfig,
    TrainConfig,
    TrainingTarget,
)
from unetseg.inference.writers import OUTPUT_KINDS
from unetseg.objects.instances import resolve_rule
from unetseg.runtime.device import DEVICE_KINDS
from unetseg.runtime.errors import UserError
from unetseg.scoring.names import INSTANCE_SCORES, validation_scores
from unetseg.tracking.loggers import check_logger_packages


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def check_train(cfg: TrainConfig) -> None:
    m, o, d, t = cfg.model, cfg.optim, cfg.data, cfg.trainer
    _require(m.in_channels in (1, 3), f"model.in_channels={m.in_channels}: use 1 (grayscale) or 3 (colour)")
    _require(m.num_classes >= 1, f"model.num_classes={m.num_classes}: must be at least 1 (1 = binary)")
    _require(m.base_channels >= 1, f"model.base_channels={m.base_channels}: must be a positive width")
    _require(1 <= m.depth <= 8, f"model.depth={m.depth}: must be between 1 and 8")
    check_max_pixels(d.max_pixels, "data.max_pixels")
    _require(o.lr > 0, f"optim.lr={o.lr}: the learning rate must be > 0 (for example optim.lr=1e-5)")
    _require(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay}: must be >= 0")
    _require(0 <= o.momentum < 1, f"optim.momentum={o.momentum}: must be in [0, 1)")
    _require(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        f"optim.betas={list(o.betas)}: give two values in [0, 1), for example optim.betas=[0.9,0.999]",
    )
    _require(
        0 < d.val_fraction < 1,
        f"data.val_fraction={d.val_fraction}: must be strictly between 0 and 1 (for example 0.2)",
    )
    if d.source == DataSource.synthetic:
        _require(
            d.root is None and d.val_root is None,
            "data.root/data.val_root are set but data=synthetic makes its own images: add data=isbi (or "
            "data=folder) to train on your folder",
        )
    if d.source == DataSource.folder:
        _require(
            d.root is not None,
            "data.root is not set: point it at a folder with image/ and label/, e.g. data.root=path/to/train",
        )
    if d.target == TrainingTarget.boundary:
        _require(
            m.num_classes == 3 and len(d.class_names) == 3,
            "data.target=boundary trains three classes: add model.num_classes=3 "
            "'data.class_names=[background,interior,boundary]' (or use experiment=nuclei as a starting point)",
        )
    _require(d.boundary_width >= 1, f"data.boundary_width={d.boundary_width}: must be at least 1 pixel")
    expected_names = max(m.num_classes, 2)
    _require(
        len(d.class_names) == expected_names,
        f"data.class_names has {len(d.class_names)} names but model.num_classes={m.num_classes} needs "
        f"{expected_names}: set data.class_names=[...] with one name per class (background first)",
    )
    low, high = d.normalization.low_percentile, d.normalization.high_percentile
    _require(
        0 <= low < high <= 100,
        f"data.normalization percentiles ({low}, {high}): need 0 <= low_percentile < high_percentile <= 100",
    )
    _require(d.synthetic.num_images >= 2, "data.synthetic.num_images: need at least 2 (train + validation)")
    _require(d.synthetic.size >= 16, "data.synthetic.size: must be at least 16 pixels")
    _require(t.epochs >= 1, f"trainer.epochs={t.epochs}: must be at least 1")
    _require(t.batch_size >= 1, f"trainer.batch_size={t.batch_size}: must be at least 1")
    _require(
        t.workers is None or t.workers >= 0,
        f"trainer.workers={t.workers}: must be >= 0 (0 loads data in the main process), or null for automatic",
    )
    _require(0 < t.threshold < 1, f"trainer.threshold={t.threshold}: must be strictly between 0 and 1")
    check_device(t.device, "trainer.device")
    _check_training_recipe(cfg)


def _check_training_recipe(cfg: TrainConfig) -> None:
    """Crops, augmentation, loss weights, schedule, monitor and early stopping."""
    m, d, t, sc = cfg.model, cfg.data, cfg.trainer, cfg.schedule
    if d.patch_size is not None:
        _require(
            d.patch_size >= 2**m.depth,
            f"data.patch_size={d.patch_size}: must be at least {2**m.depth} px for model.depth={m.depth} (or null)",
        )
    _require(
        d.samples_per_epoch is None or d.samples_per_epoch >= 1,
        f"data.samples_per_epoch={d.samples_per_epoch}: must be at least 1, or null for one pass over the images",
    )
    a = d.augment
    for key in ("flip", "rotate90", "elastic", "brightness", "contrast", "gamma", "noise", "blur"):
        value = getattr(a, key)
        _require(0 <= value <= 1, f"data.augment.{key}={value}: a probability, between 0 and 1 (0 = off)")
    _require(a.elastic_grid >= 2, f"data.augment.elastic_grid={a.elastic_grid}: need at least 2 control points")
    _require(a.elastic_sigma >= 0, f"data.augment.elastic_sigma={a.elastic_sigma}: must be >= 0 pixels")
    ranges = a.intensity
    for key in ("brightness", "contrast", "gamma", "noise_std", "blur_sigma"):
        value = getattr(ranges, key)
        _require(value >= 0, f"data.augment.intensity.{key}={value}: must be >= 0")
    _require(ranges.gamma < 1, f"data.augment.intensity.gamma={ranges.gamma}: must be < 1 (gamma stays positive)")
    _require(t.border_weight >= 0, f"trainer.border_weight={t.border_weight}: must be >= 0")
    _require(t.border_sigma > 0, f"trainer.border_sigma={t.border_sigma}: must be > 0 pixels")
    scores = [score.key for score in validation_scores(d.class_names)]
    _require(
        t.monitor in scores,
        f"trainer.monitor={t.monitor}: not a validation score; use one of {', '.join(scores)}",
    )
    if t.monitor in [score.key for score in INSTANCE_SCORES]:
        _require(t.object_scores, f"trainer.monitor={t.monitor} scores objects: set trainer.object_scores=true")
        try:
            resolve_rule("auto", d.target.value, list(d.class_names))
        except UserError as error:
            raise UserError(f"trainer.monitor={t.monitor} scores objects, but {error}") from None
    _require(0 <= t.monitor_ema < 1, f"trainer.monitor_ema={t.monitor_ema}: must be in [0, 1) (0 = no smoothing)")
    _require(t.log_every_n_steps >= 1, f"trainer.log_every_n_steps={t.log_every_n_steps}: must be at least 1")
    _require(t.report_images >= 0, f"trainer.report_images={t.report_images}: must be 0 or more")
    _require(
        len(set(t.loggers)) == len(t.loggers), f"trainer.loggers={[n.value for n in t.loggers]}: name each logger once"
    )
    check_logger_packages([name.value for name in t.loggers])
    _require(
        t.early_stopping is None or t.early_stopping >= 1,
        f"trainer.early_stopping={t.early_stopping}: a number of epochs >= 1, or null to never stop early",
    )
    _require(sc.exponent > 0, f"schedule.exponent={sc.exponent}: must be > 0")
    _require(sc.min_lr >= 0, f"schedule.min_lr={sc.min_lr}: must be >= 0")
    _require(0 < sc.pct_start < 1, f"schedule.pct_start={sc.pct_start}: must be strictly between 0 and 1")
    _require(sc.patience >= 0, f"schedule.patience={sc.patience}: must be >= 0 epochs")
    _require(0 < sc.factor < 1, f"schedule.factor={sc.factor}: must be strictly between 0 and 1")


def check_inference(cfg: InferenceConfig) -> None:
    if cfg.threshold is not None:
        _require(0 < cfg.threshold < 1, f"threshold={cfg.threshold}: must be strictly between 0 and 1")
    _require(0 <= cfg.overlap < 1, f"overlap={cfg.overlap}: must be in [0, 1) (0.5 = tiles overlap by half)")
    _require(cfg.batch_size >= 1, f"batch_size={cfg.batch_size}: must be at least 1")
    _require(cfg.margin >= 0, f"margin={cfg.margin}: mirrored pixels around each image, must be >= 0")
    _require(
        cfg.tile_size is None or cfg.tile_size >= 16,
        f"tile_size={cfg.tile_size}: must be at least 16 pixels, or null to run each image whole",
    )
    _require(cfg.instances.min_size >= 0, f"instances.min_size={cfg.instances.min_size}: must be >= 0 pixels")
    _require(
        cfg.instances.min_distance >= 1, f"instances.min_distance={cfg.instances.min_distance}: must be >= 1 pixel"
    )
    _require(
        -1 < cfg.instances.seed_margin < 1,
        f"instances.seed_margin={cfg.instances.seed_margin}: a difference of probabilities, between -1 and 1",
    )
    check_device(cfg.device, "device")


def check_max_pixels(value: int | None, key: str) -> None:
    _require(
        value is None or value >= 0,
        f"{key}={value}: give the most pixels one image may have (e.g. {key}=1073741824), or 0 for no limit",
    )


def check_predict(cfg: PredictConfig) -> None:
    _require(
        cfg.input is not None,
        "input is not set: say which image or folder to segment, e.g. unetseg predict input=data/test",
    )
    check_inference(cfg)
    check_max_pixels(cfg.max_pixels, "max_pixels")
    unknown = [kind for kind in cfg.save if kind not in OUTPUT_KINDS]
    guesses = [match for kind in unknown for match in difflib.get_close_matches(kind, OUTPUT_KINDS, n=1)]
    hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
    _require(
        bool(cfg.save) and not unknown,
        f"save={list(cfg.save)}{hint}: choose one or more of {', '.join(OUTPUT_KINDS)} (e.g. save=[mask,overlay])",
    )
    _require(
        cfg.pixel_size is None or (math.isfinite(cfg.pixel_size) and cfg.pixel_size > 0),
        f"pixel_size={cfg.pixel_size}: give the pixel size in µm as a positive number (e.g. pixel_size=0.325)",
    )


EVALUATION_SPLITS = ("val", "train", "all")


def check_evaluate(cfg: EvaluateConfig) -> None:
    check_inference(cfg)
    check_max_pixels(cfg.data.max_pixels, "data.max_pixels")
    _require(
        (cfg.input is None) == (cfg.labels is None),
        "give both input=IMAGES and labels=LABELS folders, or neither (then data=... names the labelled set)",
    )
    if cfg.input is None:
        _require(
            cfg.data.source == DataSource.synthetic or cfg.data.root is not None,
            "nothing to evaluate on: give data.root=path/to/train (data=isbi), or input=IMAGES labels=LABELS",
        )
    _require(
        cfg.split in EVALUATION_SPLITS,
        f"split={cfg.split}: use val (the held-out images training validated on), train or all",
    )


def check_synthesize(cfg: SynthesizeConfig) -> None:
    _require(cfg.output is not None, "output is not set: e.g. unetseg synthesize output=data/synthetic")
    _require(cfg.count >= 1, f"count={cfg.count}: must be at least 1")
    _require(16 <= cfg.size <= 4096, f"size={cfg.size}: must be between 16 and 4096 pixels")


def check_export(cfg: ExportConfig) -> None:
    _require(
        cfg.opset >= 18,
        f"opset={cfg.opset}: torch's ONNX exporter writes opset 18 or newer (opset=18 suits the oldest runtimes)",
    )


def check_device(device: str, key: str) -> None:
    """The device names unetseg takes (whether the device is there is resolve_device's question)."""
    kind = device.split(":")[0]
    _require(
        kind in DEVICE_KINDS,
        f"{key}={device}: use auto, cpu, cuda, cuda:N or mps",
    )


CHECKS: dict[str, Callable[[Any], None]] = {
    "train": check_train,
    "predict": check_predict,
    "evaluate": check_evaluate,
    "export": check_export,
    "synthesize": check_synthesize,
}
