"""Typed schema of every command's config, registered in Hydra's ConfigStore.

The YAML files under ``conf/`` hold the values; these dataclasses hold the types (every field is
MISSING here, so a value lives in exactly one place). Hydra merges the YAML into the schema, so a
typo (``optim.lrr=1``) or a wrong type (``trainer.epochs=abc``) fails at start-up with Hydra's own
message. unetseg.checks adds the range checks a type cannot express.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


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
    weighted_bce = "weighted_bce"
    weighted_bce_dice = "weighted_bce_dice"


class ScheduleName(str, Enum):
    constant = "constant"
    poly = "poly"
    cosine = "cosine"
    onecycle = "onecycle"
    plateau = "plateau"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    openvino = "openvino"


class TestTimeAugmentation(str, Enum):
    none = "none"
    flip = "flip"
    d4 = "d4"


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


class ProbabilityFormat(str, Enum):
    png = "png"
    tiff = "tiff"


class OverlayStyle(str, Enum):
    tint = "tint"
    outline = "outline"


class LoggerName(str, Enum):
    tensorboard = "tensorboard"
    mlflow = "mlflow"


class DataSource(str, Enum):
    folder = "folder"
    synthetic = "synthetic"


class SyntheticKind(str, Enum):
    voronoi = "voronoi"
    nuclei = "nuclei"


class TrainingTarget(str, Enum):
    mask = "mask"
    boundary = "boundary"


class InstanceMethod(str, Enum):
    auto = "auto"
    boundary = "boundary"
    distance = "distance"
    membrane = "membrane"


class LabelEncoding(str, Enum):
    auto = "auto"
    binary = "binary"
    instance = "instance"


@dataclass
class ModelSpec:
    """The network: the ``model`` config node, and (as :meth:`to_dict`) part of every checkpoint, which
    is everything needed to rebuild it (unetseg.model.build_network)."""

    upsampling: Upsampling = MISSING
    in_channels: int = MISSING
    num_classes: int = MISSING
    base_channels: int = MISSING
    depth: int = MISSING

    def __post_init__(self) -> None:
        if self.upsampling != MISSING:  # a checkpoint stores the plain string
            self.upsampling = Upsampling(self.upsampling)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (no Enum), so that a checkpoint holding it loads with weights_only=True."""
        return {**asdict(self), "upsampling": self.upsampling.value}

    def __repr__(self) -> str:  # e.g. in "a different network" errors: upsampling='bilinear', not the Enum
        return f"ModelSpec({', '.join(f'{key}={value!r}' for key, value in self.to_dict().items())})"


@dataclass
class OptimConfig:
    name: OptimizerName = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    momentum: float = MISSING
    betas: list[float] = MISSING
    nesterov: bool = MISSING


@dataclass
class IntensityConfig:
    brightness: float = MISSING
    contrast: float = MISSING
    gamma: float = MISSING
    noise_std: float = MISSING
    blur_sigma: float = MISSING


@dataclass
class AugmentConfig:
    """Probabilities of each augmentation (0 = off); ``intensity`` holds the ranges."""

    flip: float = MISSING
    rotate90: float = MISSING
    elastic: float = MISSING
    elastic_grid: int = MISSING
    elastic_sigma: float = MISSING
    brightness: float = MISSING
    contrast: float = MISSING
    gamma: float = MISSING
    noise: float = MISSING
    blur: float = MISSING
    intensity: IntensityConfig = field(default_factory=IntensityConfig)


@dataclass
class SyntheticConfig:
    kind: SyntheticKind = MISSING
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
    image_dir: str | None = MISSING
    label_dir: str | None = MISSING
    label_suffix: str | None = MISSING
    val_root: str | None = MISSING
    val_fraction: float = MISSING
    folds: int | None = MISSING  # K contiguous blocks, block ``fold`` validates (null: the last val_fraction does)
    fold: int = MISSING
    class_names: list[str] = MISSING
    label_encoding: LabelEncoding = MISSING
    target: TrainingTarget = MISSING
    boundary_width: int = MISSING
    patch_size: int | None = MISSING
    samples_per_epoch: int | None = MISSING
    max_pixels: int | None = MISSING  # the most pixels one image may have (checked from its header); 0/null: any
    in_memory: str = MISSING  # auto, true or false (a string: Hydra reads true/false as booleans)
    memory_share: float = MISSING
    cache_dir: str | None = MISSING
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
    border_weight: float = MISSING
    border_sigma: float = MISSING
    class_balance: bool = MISSING
    threshold: float | int | str = MISSING  # a probability, or "auto" (int: 0 and 1 refused in words)
    monitor: str = MISSING
    monitor_ema: float = MISSING
    weight_ema: float = MISSING  # the decay of the weights' moving average per step (training.weight_average); 0 = off
    early_stopping: int | None = MISSING
    resume: str | None = MISSING
    init_from: str | None = MISSING  # fine-tuning: start from another run's weights (a checkpoint or run folder)
    precision: Precision = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    sync_batchnorm: bool = MISSING
    loggers: list[LoggerName] = MISSING
    log_every_n_steps: int = MISSING
    mlflow_tracking_uri: str | None = MISSING
    mlflow_experiment: str = MISSING
    report_images: int = MISSING
    save_last: bool = MISSING
    time_budget: str | None = MISSING  # "20m", "90s", "2h": as many epochs as fit (training.budget)
    object_scores: bool = MISSING


@dataclass
class ScheduleConfig:
    name: ScheduleName = MISSING
    exponent: float = MISSING
    min_lr: float = MISSING
    pct_start: float = MISSING
    patience: int = MISSING
    factor: float = MISSING


@dataclass
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    runs_root: str = MISSING
    verbose: bool = MISSING
    plan: bool = MISSING  # experiment=auto: plan the recipe from the data and this machine (unetseg.planning)


@dataclass
class InstancesConfig:
    """How class maps become objects (unetseg.objects.instances)."""

    method: InstanceMethod = MISSING
    min_size: int = MISSING
    min_distance: int = MISSING
    seed_margin: float = MISSING


@dataclass
class InferenceConfig:
    """How a checkpoint predicts (conf/inference.yaml): shared by predict and evaluate."""

    threshold: float | None = MISSING
    device: str = MISSING
    precision: Precision = MISSING
    channels_last: bool = MISSING
    backend: Backend = MISSING
    tile_size: int | None = MISSING
    overlap: float = MISSING
    margin: int = MISSING
    gaussian: bool = MISSING
    batch_size: int = MISSING
    tta: TestTimeAugmentation = MISSING
    instances: InstancesConfig = field(default_factory=InstancesConfig)


@dataclass
class PredictConfig(InferenceConfig):
    input: str | None = MISSING
    # a checkpoint or run folder, an ensemble.yaml, or a list of checkpoints (an ensemble); null: the newest.
    # Any: OmegaConf's unions cannot mix str and list (checks.check_checkpoint_setting checks the value)
    checkpoint: Any = MISSING
    output: str | None = MISSING
    save: list[str] = MISSING
    probability_format: ProbabilityFormat = MISSING
    overlay_style: OverlayStyle = MISSING
    overlay_classes: list[str] | None = MISSING
    pixel_size: float | None = MISSING
    overwrite: bool = MISSING
    runs_root: str = MISSING
    max_pixels: int | None = MISSING  # the most pixels one input page may have (checked from its header); 0/null: any


@dataclass
class EvaluateConfig(InferenceConfig):
    checkpoint: Any = MISSING  # as PredictConfig.checkpoint
    data: DataConfig = field(default_factory=DataConfig)
    split: str = MISSING
    input: str | None = MISSING
    labels: str | None = MISSING
    output: str | None = MISSING
    overwrite: bool = MISSING
    runs_root: str = MISSING


@dataclass
class SynthesizeConfig:
    output: str | None = MISSING
    kind: SyntheticKind = MISSING
    count: int = MISSING
    size: int = MISSING
    seed: int = MISSING


@dataclass
class ExportConfig:
    checkpoint: str | None = MISSING
    format: ExportFormat = MISSING
    output: str | None = MISSING
    opset: int = MISSING
    overwrite: bool = MISSING
    runs_root: str = MISSING


def register_schemas() -> None:
    """Store the schemas; each command's YAML lists its schema first in its defaults."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="predict_schema", node=PredictConfig)
    store.store(name="synthesize_schema", node=SynthesizeConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    store.store(name="export_schema", node=ExportConfig)


def to_typed(cfg: DictConfig) -> Any:
    """The composed config as schema dataclass instances (enums included), without Hydra's own node."""
    return OmegaConf.to_object(cfg)
