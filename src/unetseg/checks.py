"""Range checks that a type cannot express, one per command; each message names the key and the fix.

The runner calls the command's check on every variant of the overrides before Hydra makes a run directory
(unetseg.runner.preflight), and again on the config a job runs with.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import math
from collections.abc import Callable
from typing import Any

from unetseg.config import (
    DataConfig,
    DataSource,
    EvaluateConfig,
    ExportConfig,
    ExportFormat,
    InferenceConfig,
    PredictConfig,
    SynthesizeConfig,
    TrainConfig,
    TrainingTarget,
)
from unetseg.data.pairing import with_default_root
from unetseg.inference.writers import OUTPUT_KINDS
from unetseg.model.spec import spec_problem
from unetseg.objects.instances import resolve_rule
from unetseg.runtime.device import device_name_problem, device_unavailable
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import user_path
from unetseg.scoring.names import INSTANCE_SCORES, validation_scores
from unetseg.tracking.loggers import check_logger_packages
from unetseg.training.budget import duration_seconds

# Bounds shared by more than one command (each in one place).
MAX_SEED = 2**32 - 1  # numpy's seed range (np.random.seed), the narrowest of the generators a seed feeds
SYNTHETIC_SIZES = (16, 4096)  # pixels per side of a generated image: data.synthetic.size and synthesize size=
MAX_SYNTHETIC_PIXELS = 2**28  # data.synthetic.num_images × size²: all of it is generated and held in memory
MAX_PATCH_SIZE = 8192  # data.patch_size: training crops, in pixels per side
MAX_MARGIN = 1024  # inference margin: mirrored pixels around each image (the U-Net paper's overlap-tile: 92)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def check_finite(cfg: Any, command: str, prefix: str = "") -> None:
    """No nan or inf anywhere: every float of the typed config (nested groups and lists included) must be a
    finite number. The range checks compare with < and >, which nan slips through and inf often passes."""
    for spec in dataclasses.fields(cfg):
        value = getattr(cfg, spec.name)
        key = f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(value):
            check_finite(value, command, f"{key}.")
        elif _not_finite(value) or (isinstance(value, list) and any(_not_finite(item) for item in value)):
            raise UserError(
                f"{key}={value}: must be a finite number, not nan or inf; "
                f"give a number (the defaults: unetseg {command} --cfg job)"
            )


def _not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def check_seed(seed: int, key: str) -> None:
    _require(
        0 <= seed <= MAX_SEED,
        f"{key}={seed}: a seed must be between 0 and {MAX_SEED} (2**32 - 1, numpy's seed range)",
    )


def check_class_names(names: list[str], key: str) -> None:
    """Each class named, each name once: names key the per-class scores (dice_<name>) and the overlays."""
    for index, name in enumerate(names):
        _require(
            bool(name.strip()),
            f"{key}={list(names)}: class {index} has an empty name; name every class, e.g. {key}=[background,cell]",
        )
    twice = sorted({name for name in names if list(names).count(name) > 1})
    _require(
        not twice,
        f"{key}={list(names)}: {', '.join(twice)} named more than once; give each class its own name",
    )


def check_data(d: DataConfig) -> None:
    """The data settings train and evaluate share: the validation split and the synthetic generator."""
    _require(
        0 < d.val_fraction < 1,
        f"data.val_fraction={d.val_fraction}: must be strictly between 0 and 1 (for example 0.2)",
    )
    check_folds(d)
    _require(
        d.in_memory.lower() in ("auto", "true", "false"),
        f"data.in_memory={d.in_memory}: use auto (the disk cache when the data would take more than "
        "data.memory_share of the free memory), true (always in memory) or false (always the disk cache)",
    )
    _require(
        0 < d.memory_share <= 1,
        f"data.memory_share={d.memory_share}: the share of free memory the decoded data may take, in (0, 1] (e.g. 0.5)",
    )
    _require(
        not d.cache_dir or not user_path(d.cache_dir).is_file(),
        f"data.cache_dir={d.cache_dir} is a file: choose a folder for the data cache (it is made if missing)",
    )
    syn = d.synthetic
    low, high = SYNTHETIC_SIZES
    _require(
        low <= syn.size <= high,
        f"data.synthetic.size={syn.size}: must be between {low} and {high} pixels",
    )
    _require(
        syn.num_images >= 2,
        f"data.synthetic.num_images={syn.num_images}: need at least 2 (train + validation)",
    )
    _require(
        syn.num_images * syn.size**2 <= MAX_SYNTHETIC_PIXELS,
        f"data.synthetic.num_images={syn.num_images} images of {syn.size}² pixels: at most "
        f"{MAX_SYNTHETIC_PIXELS:,} pixels in all (all are generated and held in memory), "
        f"e.g. data.synthetic.num_images={max(2, MAX_SYNTHETIC_PIXELS // syn.size**2)}",
    )
    check_seed(syn.seed, "data.synthetic.seed")


def check_folds(d: DataConfig) -> None:
    """data.folds and data.fold (unetseg.data.dataset.fold_blocks); whether there are enough images for the folds
    is known once the folder is read (load_splits says it), for data=synthetic here."""
    if d.folds is None:
        _require(
            d.fold == 0,
            f"data.fold={d.fold} without data.folds: say how many folds there are (e.g. data.folds=5)",
        )
        return
    _require(
        d.folds >= 2,
        f"data.folds={d.folds}: cut the images into at least 2 folds (e.g. data.folds=5), or set data.folds=null to "
        "validate on the last data.val_fraction",
    )
    _require(
        0 <= d.fold < d.folds,
        f"data.fold={d.fold}: with data.folds={d.folds} the folds are 0 to {d.folds - 1}; choose one of them",
    )
    _require(
        d.val_root is None,
        f"data.folds={d.folds} with data.val_root={d.val_root}: a fold validates on its own block of data.root; "
        "drop data.val_root (data.val_root=null), or data.folds (data.folds=null) to validate on data.val_root",
    )
    if d.source == DataSource.synthetic:
        count = d.synthetic.num_images
        _require(
            d.folds <= count,
            f"data.folds={d.folds} is more than the data.synthetic.num_images={count} images: choose data.folds "
            f"between 2 and {count}, or generate more images",
        )


def check_train(cfg: TrainConfig) -> None:
    m, o, d, t = cfg.model, cfg.optim, cfg.data, cfg.trainer
    if t.time_budget is not None:
        seconds = duration_seconds(t.time_budget)
        _require(
            seconds is not None and math.isfinite(seconds) and seconds > 0,
            f"trainer.time_budget={t.time_budget}: give a duration such as 20m, 90s, 2h or 1h30m",
        )
    problem = spec_problem(m)
    _require(problem is None, str(problem))
    check_max_pixels(d.max_pixels, "data.max_pixels")
    _require(o.lr > 0, f"optim.lr={o.lr}: the learning rate must be > 0 (for example optim.lr=1e-5)")
    _require(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay}: must be >= 0")
    _require(0 <= o.momentum < 1, f"optim.momentum={o.momentum}: must be in [0, 1)")
    _require(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        f"optim.betas={list(o.betas)}: give two values in [0, 1), for example optim.betas=[0.9,0.999]",
    )
    check_data(d)
    check_class_names(d.class_names, "data.class_names")
    if d.source == DataSource.synthetic:
        _require(
            d.root is None and d.val_root is None,
            "data.root/data.val_root are set but data=synthetic makes its own images: add data=isbi (or "
            "data=folder) to train on your folder",
        )
    if d.source == DataSource.folder:
        with_default_root(d)  # no data.root: data/train under the launch folder (the ISBI scripts' layout), if there
    if d.target == TrainingTarget.boundary:
        _require(
            m.num_classes == 3 and len(d.class_names) == 3,
            "data.target=boundary trains three classes: add model.num_classes=3 "
            "'data.class_names=[background,interior,boundary]' (or use experiment=nuclei as a starting point)",
        )
    _require(
        1 <= d.boundary_width <= 64,
        f"data.boundary_width={d.boundary_width}: must be between 1 and 64 pixels (the band inside each object's edge)",
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
    _require(t.epochs >= 1, f"trainer.epochs={t.epochs}: must be at least 1")
    _require(t.batch_size >= 1, f"trainer.batch_size={t.batch_size}: must be at least 1")
    _require(
        t.workers is None or t.workers >= 0,
        f"trainer.workers={t.workers}: must be >= 0 (0 loads data in the main process), or null for automatic",
    )
    check_training_threshold(t.threshold, m.num_classes)
    _require(
        t.init_from is None or t.resume is None,
        f"trainer.init_from={t.init_from} and trainer.resume={t.resume} cannot be combined: resume continues a run "
        "from its own last.pt (which already holds the weights it started from); give one of them",
    )
    check_seed(t.seed, "trainer.seed")
    check_device(t.device, "trainer.device")
    _check_training_recipe(cfg)


def check_training_threshold(threshold: float | int | str, num_classes: int) -> None:
    """trainer.threshold: a probability strictly between 0 and 1, or auto (binary networks only)."""
    if threshold == "auto":
        _require(
            num_classes == 1,
            f"trainer.threshold=auto chooses the threshold of a binary network (model.num_classes=1); with "
            f"model.num_classes={num_classes} each pixel takes its most probable class, so leave trainer.threshold out",
        )
        return
    _require(
        not isinstance(threshold, str) and 0 < threshold < 1,
        f"trainer.threshold={threshold}: give a probability strictly between 0 and 1 (e.g. 0.5), or auto to choose "
        "it on the validation images after training",
    )


def _check_training_recipe(cfg: TrainConfig) -> None:
    """Crops, augmentation, loss weights, schedule, monitor and early stopping."""
    m, d, t, sc = cfg.model, cfg.data, cfg.trainer, cfg.schedule
    if d.patch_size is not None:
        _require(
            2**m.depth <= d.patch_size <= MAX_PATCH_SIZE,
            f"data.patch_size={d.patch_size}: must be between {2**m.depth} px (for model.depth={m.depth}) and "
            f"{MAX_PATCH_SIZE} px, or null for whole images",
        )
    _require(
        d.samples_per_epoch is None or d.samples_per_epoch >= 1,
        f"data.samples_per_epoch={d.samples_per_epoch}: must be at least 1, or null for one pass over the images",
    )
    a = d.augment
    for key in ("flip", "rotate90", "elastic", "brightness", "contrast", "gamma", "noise", "blur"):
        value = getattr(a, key)
        _require(0 <= value <= 1, f"data.augment.{key}={value}: a probability, between 0 and 1 (0 = off)")
    _require(
        2 <= a.elastic_grid <= 64,
        f"data.augment.elastic_grid={a.elastic_grid}: between 2 and 64 control points per side (the U-Net paper: 3)",
    )
    _require(
        0 <= a.elastic_sigma <= 1000,
        f"data.augment.elastic_sigma={a.elastic_sigma}: between 0 and 1000 pixels (the U-Net paper: 10)",
    )
    ranges = a.intensity
    for key in ("brightness", "contrast", "gamma", "noise_std", "blur_sigma"):
        value = getattr(ranges, key)
        _require(value >= 0, f"data.augment.intensity.{key}={value}: must be >= 0")
    _require(ranges.gamma < 1, f"data.augment.intensity.gamma={ranges.gamma}: must be < 1 (gamma stays positive)")
    _require(
        ranges.blur_sigma <= 100,
        f"data.augment.intensity.blur_sigma={ranges.blur_sigma}: at most 100 pixels (wider erases the image)",
    )
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
    _require(0 <= t.weight_ema < 1, f"trainer.weight_ema={t.weight_ema}: must be in [0, 1) (0 = no averaging)")
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
    _require(
        0 <= cfg.margin <= MAX_MARGIN,
        f"margin={cfg.margin}: mirrored pixels around each image, between 0 and {MAX_MARGIN} (the U-Net paper: 92)",
    )
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


def check_checkpoint_setting(value: Any) -> None:
    """predict's and evaluate's checkpoint= (typed Any: a path, or a list of them for an ensemble)."""
    usage = "give a checkpoint, a run folder or an ensemble.yaml, or a list of checkpoints: checkpoint=[a.pt,b.pt]"
    plain = (str, int, float)  # Hydra reads checkpoint=2024 as a number: a folder named 2024
    if isinstance(value, list):
        _require(bool(value), f"checkpoint=[] names no checkpoint: {usage}")
        for item in value:
            _require(
                isinstance(item, plain) and not isinstance(item, bool) and item != "",
                f"checkpoint={value}: {item!r} is not a path; {usage}",
            )
    else:
        _require(
            value is None or (isinstance(value, plain) and not isinstance(value, bool)),
            f"checkpoint={value}: not a path; {usage}",
        )


def check_predict(cfg: PredictConfig) -> None:
    _require(
        cfg.input is not None,
        "input is not set: say which image or folder to segment, e.g. unetseg predict input=data/test",
    )
    check_checkpoint_setting(cfg.checkpoint)
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
    check_output_is_not_a_file(cfg.output, "the masks")


def check_output_is_not_a_file(output: str | None, what: str) -> None:
    """``output=`` names a folder: an existing file there is a mistake (a file meant as input, or a typo)."""
    _require(
        not output or not user_path(output).is_file(),
        f"output={output} is a file, not a folder: choose a folder for {what} (it is made if missing)",
    )


EVALUATION_SPLITS = ("val", "train", "all")


def check_evaluate(cfg: EvaluateConfig) -> None:
    check_checkpoint_setting(cfg.checkpoint)
    check_inference(cfg)
    check_data(cfg.data)
    check_output_is_not_a_file(cfg.output, "metrics.json")
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
    low, high = SYNTHETIC_SIZES
    _require(low <= cfg.size <= high, f"size={cfg.size}: must be between {low} and {high} pixels")
    check_seed(cfg.seed, "seed")


def check_export(cfg: ExportConfig) -> None:
    _require(
        cfg.opset >= 18,
        f"opset={cfg.opset}: torch's ONNX exporter writes opset 18 or newer (opset=18 suits the oldest runtimes)",
    )
    newest = _newest_onnx_opset() if cfg.format == ExportFormat.onnx else None
    _require(
        newest is None or cfg.opset <= newest,
        f"opset={cfg.opset}: the installed onnx knows opsets up to {newest} (torch would write 18 instead); "
        f"choose 18 to {newest}",
    )


def _newest_onnx_opset() -> int | None:
    """The newest opset the installed onnx package defines (None without onnx: export says how to install it)."""
    if importlib.util.find_spec("onnx") is None:
        return None
    import onnx.defs

    return int(onnx.defs.onnx_opset_version())


def check_device(device: str, key: str) -> None:
    """The device names unetseg takes (whether the device is here: check_device_here)."""
    problem = device_name_problem(device)
    _require(problem is None, f"{key}={device}: {problem}")


def check_device_here(cfg: Any) -> None:
    """The device the config names is on this machine. The runner asks this before a single local run; a
    sweep's jobs may run elsewhere (a Slurm launcher), so there each job's resolve_device says it."""
    for key, device in (
        ("trainer.device", getattr(getattr(cfg, "trainer", None), "device", None)),
        ("device", getattr(cfg, "device", None)),
    ):
        if isinstance(device, str):
            problem = device_unavailable(device)
            _require(problem is None, f"{key}={device}: {problem}")


def check_cache(cfg: TrainConfig) -> None:
    _require(
        cfg.data.source != DataSource.synthetic,
        "data=synthetic is generated in memory, there is nothing to cache: give a folder (data=folder data.root=DIR)",
    )
    check_train(cfg)


def _with_common_checks(command: str, check: Callable[[Any], None]) -> Callable[[Any], None]:
    """A command's check, after the checks every config gets (finite numbers)."""

    @functools.wraps(check)
    def run(cfg: Any) -> None:
        check_finite(cfg, command)
        check(cfg)

    return run


CHECKS: dict[str, Callable[[Any], None]] = {
    command: _with_common_checks(command, check)
    for command, check in {
        "train": check_train,
        "predict": check_predict,
        "evaluate": check_evaluate,
        "export": check_export,
        "synthesize": check_synthesize,
        "cache": check_cache,
        "plan": check_train,
    }.items()
}
