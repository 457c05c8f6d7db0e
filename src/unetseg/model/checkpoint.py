"""Checkpoints: plain dicts of tensors and primitives, written atomically, loadable with weights_only=True.

Everything predict needs travels in the file: the model spec, the input normalisation, the class names
and the threshold. No pickled Python objects, so loading never runs code from the file.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unetseg.config import ModelSpec, Upsampling
from unetseg.data.normalize import PercentileNormalizer
from unetseg.io.atomic import atomic_open
from unetseg.model.spec import spec_problem
from unetseg.model.unet import UNet, build_network
from unetseg.runtime.console import console
from unetseg.runtime.distributed import broadcast_from_main
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import user_path

FORMAT = "unetseg-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    model: ModelSpec
    normalization: PercentileNormalizer
    class_names: list[str]
    threshold: float
    epoch: int
    metrics: dict[str, float]
    # what the network was trained to output (unetseg.data.targets): mask, or boundary (three classes)
    target: str = "mask"
    boundary_width: int = 2
    # last.pt only: optimiser, scheduler, scaler, monitor and RNG state, for trainer.resume
    training_state: dict[str, Any] | None = None

    def build_network(self) -> UNet:
        """The trained network, in eval mode (as trained: BatchNorm not folded)."""
        network = build_network(self.model)
        network.load_state_dict(self.state_dict)
        return network.eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "state_dict": self.state_dict,
            "model": self.model.to_dict(),
            "normalization": self.normalization.to_dict(),
            "class_names": list(self.class_names),
            "threshold": float(self.threshold),
            "epoch": int(self.epoch),
            "metrics": {key: float(value) for key, value in self.metrics.items()},
            "target": self.target,
            "boundary_width": int(self.boundary_width),
            "training_state": self.training_state,
        }


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    with atomic_open(path, durable=True) as handle:
        torch.save(checkpoint.to_dict(), handle)


def load_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint at ``path``, validated before anything is built from it: a file that unetseg train
    did not write as it is (edited, damaged, or from a foreign tool) is a UserError naming what is wrong."""
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise UserError(f"checkpoint {path} {what}: give checkpoint=path/to/best.pt")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the one line below says it all
            warnings.simplefilter("ignore")
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for foreign files; all mean the same to the user
        raw = None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        if path.suffix in (".yaml", ".yml"):  # unetseg.model.ensemble: predict's and evaluate's ensembles
            raise UserError(f"{path} is YAML, not a checkpoint: give a best.pt (predict and evaluate take ensembles)")
        raise UserError(f"{path} is not a unetseg checkpoint: use a best.pt or last.pt from a unetseg train run")
    if raw.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format {raw.get('format_version')}, this unetseg reads {FORMAT_VERSION}"
        )
    _validate_fields(path, raw)
    model = _validate_model_spec(path, raw["model"])
    class_names = _validate_class_names(path, raw["class_names"], model)
    target = _validate_target(path, raw, class_names)
    _validate_scalars(path, raw)
    normalization = _validate_normalization(path, raw["normalization"])
    _validate_metrics(path, raw["metrics"])
    _validate_state_dict(path, raw["state_dict"], _expected_tensors(model))
    return Checkpoint(
        state_dict=raw["state_dict"],
        model=model,
        normalization=normalization,
        class_names=class_names,
        threshold=float(raw["threshold"]),
        epoch=raw["epoch"],
        metrics=dict(raw["metrics"]),
        target=target,
        boundary_width=raw.get("boundary_width", 2),
        training_state=raw.get("training_state"),
    )


_FIX = "use a best.pt or last.pt written by unetseg train, or retrain it"


def _damaged(path: Path, problem: str) -> UserError:
    """The one-line error for a checkpoint that unetseg train did not write as it is."""
    return UserError(f"{path} is a damaged or edited unetseg checkpoint: {problem}; {_FIX}")


def _unbuildable(path: Path, problem: str) -> UserError:
    """The one-line error for a model spec that this unetseg cannot (or will not) build."""
    return UserError(f"{path} describes a network this unetseg cannot build ({problem}): retrain it")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return _is_number(value) and math.isfinite(value)  # type: ignore[arg-type]


# Every top-level key of Checkpoint.to_dict: what its value must be, as a test and in words.
_REQUIRED_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "format": (lambda value: isinstance(value, str), "a string"),
    "format_version": (_is_int, "an integer"),
    "state_dict": (lambda value: isinstance(value, dict), "a dict of tensors"),
    "model": (lambda value: isinstance(value, dict), "a dict"),
    "normalization": (lambda value: isinstance(value, dict), "a dict"),
    "class_names": (lambda value: isinstance(value, list), "a list of names"),
    "threshold": (_is_number, "a number"),
    "epoch": (_is_int, "an integer"),
    "metrics": (lambda value: isinstance(value, dict), "a dict"),
}
# Keys that checkpoints from earlier unetseg versions lack (no target: a mask network; no training state).
_OPTIONAL_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "target": (lambda value: isinstance(value, str), "a string"),
    "boundary_width": (_is_int, "an integer"),
    "training_state": (lambda value: value is None or isinstance(value, dict), "a dict or None"),
}


def _validate_fields(path: Path, raw: dict[Any, Any]) -> None:
    """Exactly the known top-level keys (the optional ones may be absent), each holding the right type."""
    missing = [key for key in _REQUIRED_FIELDS if key not in raw]
    if missing:
        raise _damaged(path, f"it has no {', '.join(missing)}")
    fields = {**_REQUIRED_FIELDS, **_OPTIONAL_FIELDS}
    unknown = [key for key in raw if key not in fields]
    if unknown:
        raise _damaged(path, f"unknown key {unknown[0]!r} (a checkpoint holds {', '.join(fields)})")
    for key, value in raw.items():
        test, kind = fields[key]
        if not test(value):
            raise _damaged(path, f"{key} is {type(value).__name__}, not {kind}")


def _validate_model_spec(path: Path, spec: dict[Any, Any]) -> ModelSpec:
    """Exactly ModelSpec's fields: upsampling by its string value, integers (not bools or floats) in range."""
    names = [field.name for field in dataclasses.fields(ModelSpec)]
    missing = [name for name in names if name not in spec]
    unknown = [key for key in spec if key not in names]
    if missing or unknown:
        problem = f"model has no {missing[0]}" if missing else f"model has an unknown field {unknown[0]!r}"
        raise _unbuildable(path, problem)
    upsampling = spec["upsampling"]
    choices = [choice.value for choice in Upsampling]
    if not isinstance(upsampling, str) or upsampling not in choices:
        raise _unbuildable(path, f"model.upsampling={upsampling!r}: not one of {', '.join(choices)}")
    for name in ("in_channels", "num_classes", "base_channels", "depth"):
        value = spec[name]
        if not _is_int(value):
            raise _unbuildable(path, f"model.{name}={value!r} is {type(value).__name__}, not an integer")
    model = ModelSpec(**spec)
    problem = spec_problem(model)  # the same values the config may take
    if problem:
        raise _unbuildable(path, problem)
    return model


def _expected_tensors(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The state_dict that ``spec``'s network has, as meta tensors: shapes and dtypes, no storage (the spec
    is already within spec_problem's bounds: under 1e9 parameters, see tests/test_checkpoint_validation.py)."""
    with torch.device("meta"):
        return build_network(spec).state_dict()


def _validate_state_dict(path: Path, state_dict: dict[Any, Any], expected: dict[str, torch.Tensor]) -> None:
    """Names to tensors, the very names, shapes and kinds (floating or not) of the spec's network, and no
    NaN or infinite weight."""
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            raise _damaged(path, f"state_dict[{key!r}] is {type(value).__name__}, not a dense tensor")
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        problems = ([f"lacks {missing[0]!r}"] if missing else []) + (
            [f"has an unexpected {unexpected[0]!r}"] if unexpected else []
        )
        raise _damaged(path, f"its state_dict does not fit the model spec: it {' and '.join(problems)}")
    for key, tensor in state_dict.items():
        want = expected[key]
        if tensor.shape != want.shape:
            raise _damaged(
                path, f"state_dict[{key!r}] has shape {list(tensor.shape)}, the model spec needs {list(want.shape)}"
            )
        if tensor.is_floating_point() != want.is_floating_point():
            kind = "floating" if want.is_floating_point() else "integer"
            raise _damaged(path, f"state_dict[{key!r}] is {tensor.dtype}, not a {kind} tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _damaged(path, f"state_dict[{key!r}] holds NaN or infinite values")


def _validate_class_names(path: Path, class_names: list[Any], spec: ModelSpec) -> list[str]:
    """Unique non-empty names, one per class; a binary network (num_classes=1) has two: background first."""
    for name in class_names:
        if not isinstance(name, str) or not name.strip():
            raise _damaged(path, f"class name {name!r} is not a non-empty string")
    duplicates = [name for index, name in enumerate(class_names) if name in class_names[:index]]
    if duplicates:
        raise _damaged(path, f"class name {duplicates[0]!r} appears twice")
    expected = max(spec.num_classes, 2)
    if len(class_names) != expected:
        raise _damaged(
            path, f"it has {len(class_names)} class names but model.num_classes={spec.num_classes} needs {expected}"
        )
    return list(class_names)


def _validate_target(path: Path, raw: dict[str, Any], class_names: list[str]) -> str:
    """The training target (checkpoints from before instance targets have none: mask)."""
    target = raw.get("target", "mask")
    if target not in ("mask", "boundary"):
        raise UserError(f"{path} has an unknown training target {target!r}: retrain it with this unetseg")
    if target == "boundary" and len(class_names) != 3:
        raise UserError(f"{path} claims a boundary target but has {len(class_names)} classes: retrain it")
    return str(target)


def _validate_scalars(path: Path, raw: dict[str, Any]) -> None:
    """threshold in (0, 1) as trainer.threshold allows, epoch >= 0, boundary_width >= 1 (as data.boundary_width)."""
    threshold = raw["threshold"]
    if not (_is_finite_number(threshold) and 0 < threshold < 1):
        raise _damaged(path, f"threshold={threshold}: must be strictly between 0 and 1")
    if raw["epoch"] < 0:
        raise _damaged(path, f"epoch={raw['epoch']}: must be >= 0")
    if raw.get("boundary_width", 2) < 1:
        raise _damaged(path, f"boundary_width={raw['boundary_width']}: must be at least 1 pixel")


def _validate_normalization(path: Path, spec: dict[Any, Any]) -> PercentileNormalizer:
    """PercentileNormalizer.to_dict's keys, with finite percentiles 0 <= low < high <= 100 (as in the config)."""
    if set(spec) != {"method", "low", "high"}:
        raise _damaged(path, f"normalization has keys {sorted(map(str, spec))}, not ['high', 'low', 'method']")
    if spec["method"] != "percentile":
        raise _damaged(path, f"normalization method {spec['method']!r} is unknown (unetseg uses 'percentile')")
    low, high = spec["low"], spec["high"]
    if not (_is_finite_number(low) and _is_finite_number(high) and 0 <= low < high <= 100):
        raise _damaged(path, f"normalization percentiles ({low}, {high}): need 0 <= low < high <= 100")
    return PercentileNormalizer.from_dict(spec)


def _validate_metrics(path: Path, metrics: dict[Any, Any]) -> None:
    """Score names to numbers (NaN allowed: a score that was undefined, e.g. Dice with no foreground)."""
    for key, value in metrics.items():
        if not isinstance(key, str) or not _is_number(value):
            raise _damaged(path, f"metrics[{key!r}] is {type(value).__name__}, not a number")


def find_checkpoint(
    given: str | None,
    runs_root: str,
    name: str = "best.pt",
    exclude: Path | None = None,
    why: str = "checkpoint not given",
) -> Path:
    """The one checkpoint finder of train's resume, predict, evaluate and export: ``given``, or else the
    newest ``checkpoints/<name>`` under ``runs_root`` (said on the console, after ``why``). Under torchrun
    rank 0 chooses and every rank takes its choice, so that a run finishing meanwhile cannot split them."""
    if given:
        return checkpoint_in(given, name)
    path = Path(str(broadcast_from_main(str(newest_checkpoint(user_path(runs_root), name, exclude)))))
    console.print(f"{why}: using the newest {name} under {runs_root}, {path}")
    return path


def checkpoint_in(given: str, name: str = "best.pt", key: str = "checkpoint") -> Path:
    """``checkpoint=`` (or ``key=``) as given: a file is itself; a training run folder (or its checkpoints/
    folder) means its ``checkpoints/<name>`` (said on the console); a folder without one is one line saying what
    was looked for."""
    path = user_path(given)
    if not path.is_dir():
        return path  # a file, or nothing there: load_checkpoint says which
    for candidate in (path / "checkpoints" / name, path / name):
        if candidate.is_file():
            console.print(f"{key}={given} is a folder: using its {candidate.relative_to(path)}, {candidate}")
            return candidate
    jobs = sorted(path.glob(f"*/checkpoints/{name}"), key=lambda job: job.parts[-3])
    if jobs:
        hint = f"; it holds {len(jobs)} runs (a sweep?): give one of them, e.g. {key}={jobs[0].parents[1]}"
    else:
        others = sorted(p.name for p in (path / "checkpoints").glob("*.pt")) if (path / "checkpoints").is_dir() else []
        which = "that file" if len(others) == 1 else "one of them"
        hint = f"; it has checkpoints/{', checkpoints/'.join(others)}: give {which}" if others else ""
    raise UserError(
        f"{key}={given} is a folder without {path / 'checkpoints' / name}: give a training run folder "
        f"(outputs/train/RUN) or a .pt file{hint}"
    )


def newest_checkpoint(runs_root: Path, name: str = "best.pt", exclude: Path | None = None) -> Path:
    """The most recently written ``checkpoints/<name>`` of any training run (or sweep job) under
    ``runs_root``, leaving out the run directory ``exclude`` (the one being written now)."""
    candidates = newest_checkpoints(runs_root, name, exclude)
    if not candidates:
        raise UserError(
            f"no training run with checkpoints/{name} under {runs_root}: train one first (unetseg train) "
            f"or give the path to a {name} explicitly"
        )
    return candidates[0]


def newest_checkpoints(runs_root: Path, name: str, exclude: Path | None = None) -> list[Path]:
    """Every ``checkpoints/<name>`` under ``runs_root`` (but not in ``exclude``), the newest first."""
    candidates = list(runs_root.glob(f"**/checkpoints/{name}")) if runs_root.is_dir() else []
    if exclude is not None:
        candidates = [path for path in candidates if exclude.resolve() not in path.resolve().parents]
    return sorted(candidates, key=lambda path: path.stat().st_mtime_ns, reverse=True)
