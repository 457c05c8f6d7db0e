"""Typed schema of every command's config, registered in Hydra's ConfigStore.

The YAML files under ``conf/`` hold the values; these dataclasses hold the types (every field is
MISSING here, so a value lives in exactly one place). Hydra merges the YAML into the schema, so a
typo (``optim.lrr=1``) or a wrong type (``trainer.epochs=abc``) fails at start-up with Hydra's own
message. :func:`check_train` and :func:`check_predict` add the range checks a type cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from unetseg.errors import UserError


class Upsampling(str, Enum):
    bilinear = "bilinear"
    transposed = "transposed"


class OptimizerName(str, Enum):
    rmsprop = "rmsprop"
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class LossName(str, Enum):
    bce = "bce"
    dice = "dice"
    bce_dice = "bce_dice"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class TestTimeAugmentation(str, Enum):
    none = "none"
    flip = "flip"
    d4 = "d4"


class ProbabilityFormat(str, Enum):
    png = "png"
    tiff = "tiff"


class OverlayStyle(str, Enum):
    tint = "tint"
    outline = "outline"


class DataSource(str, Enum):
    folder = "folder"
    synthetic = "synthetic"


class LabelEncoding(str, Enum):
    auto = "auto"
    binary = "binary"
    instance = "instance"


@dataclass
class ModelConfig:
    upsampling: Upsampling = MISSING
    in_channels: int = MISSING
    num_classes: int = MISSING
    base_channels: int = MISSING
    depth: int = MISSING


@dataclass
class OptimConfig:
    name: OptimizerName = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    momentum: float = MISSING
    betas: list[float] = MISSING
    nesterov: bool = MISSING


@dataclass
class AugmentConfig:
    flip: bool = MISSING
    rotate90: bool = MISSING


@dataclass
class SyntheticConfig:
    num_images: int = MISSING
    size: int = MISSING
    seed: int = MISSING


@dataclass
class NormalizationConfig:
    low_percentile: float = MISSING
    high_percentile: float = MISSING


@dataclass
class DataConfig:
    source: DataSource = MISSING
    root: str | None = MISSING
    image_dir: str = MISSING
    label_dir: str = MISSING
    val_root: str | None = MISSING
    val_fraction: float = MISSING
    class_names: list[str] = MISSING
    label_encoding: LabelEncoding = MISSING
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class TrainerConfig:
    device: str = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING
    workers: int | None = MISSING
    seed: int = MISSING
    loss: LossName = MISSING
    threshold: float = MISSING
    precision: Precision = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    sync_batchnorm: bool = MISSING


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class PredictConfig:
    input: str | None = MISSING
    checkpoint: str | None = MISSING
    output: str | None = MISSING
    threshold: float | None = MISSING
    device: str = MISSING
    precision: Precision = MISSING
    channels_last: bool = MISSING
    tile_size: int | None = MISSING
    overlap: float = MISSING
    gaussian: bool = MISSING
    batch_size: int = MISSING
    tta: TestTimeAugmentation = MISSING
    save: list[str] = MISSING
    probability_format: ProbabilityFormat = MISSING
    overlay_style: OverlayStyle = MISSING
    overwrite: bool = MISSING
    runs_root: str = MISSING


@dataclass
class SynthesizeConfig:
    output: str | None = MISSING
    count: int = MISSING
    size: int = MISSING
    seed: int = MISSING


def register_schemas() -> None:
    """Store the schemas; each command's YAML lists its schema first in its defaults."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="predict_schema", node=PredictConfig)
    store.store(name="synthesize_schema", node=SynthesizeConfig)


def to_typed(cfg: DictConfig) -> Any:
    """The composed config as schema dataclass instances (enums included), without Hydra's own node."""
    return OmegaConf.to_object(cfg)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def check_train(cfg: TrainConfig) -> None:
    """Range checks that a type cannot express; each message names the key and the fix."""
    m, o, d, t = cfg.model, cfg.optim, cfg.data, cfg.trainer
    _require(m.in_channels in (1, 3), f"model.in_channels={m.in_channels}: use 1 (grayscale) or 3 (colour)")
    _require(m.num_classes >= 1, f"model.num_classes={m.num_classes}: must be at least 1 (1 = binary)")
    _require(m.base_channels >= 1, f"model.base_channels={m.base_channels}: must be a positive width")
    _require(1 <= m.depth <= 8, f"model.depth={m.depth}: must be between 1 and 8")
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
    _check_device(t.device, "trainer.device")


def check_predict(cfg: PredictConfig) -> None:
    _require(
        cfg.input is not None,
        "input is not set: say which image or folder to segment, e.g. unetseg predict input=data/test",
    )
    if cfg.threshold is not None:
        _require(0 < cfg.threshold < 1, f"threshold={cfg.threshold}: must be strictly between 0 and 1")
    _require(0 <= cfg.overlap < 1, f"overlap={cfg.overlap}: must be in [0, 1) (0.5 = tiles overlap by half)")
    _require(cfg.batch_size >= 1, f"batch_size={cfg.batch_size}: must be at least 1")
    unknown = [kind for kind in cfg.save if kind not in ("mask", "probability", "overlay")]
    _require(
        bool(cfg.save) and not unknown,
        f"save={list(cfg.save)}: choose one or more of mask, probability, overlay (e.g. save=[mask,overlay])",
    )
    _require(
        cfg.tile_size is None or cfg.tile_size >= 16,
        f"tile_size={cfg.tile_size}: must be at least 16 pixels, or null to run each image whole",
    )
    _check_device(cfg.device, "device")


def check_synthesize(cfg: SynthesizeConfig) -> None:
    _require(cfg.output is not None, "output is not set: e.g. unetseg synthesize output=data/synthetic")
    _require(cfg.count >= 1, f"count={cfg.count}: must be at least 1")
    _require(cfg.size >= 16, f"size={cfg.size}: must be at least 16 pixels")


def _check_device(device: str, key: str) -> None:
    kind = device.split(":")[0]
    _require(
        kind in ("auto", "cpu", "cuda", "mps"),
        f"{key}={device}: use auto, cpu, cuda, cuda:N or mps",
    )


CHECKS = {"train": check_train, "predict": check_predict, "synthesize": check_synthesize}
