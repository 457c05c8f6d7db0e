"""Ensembles: several checkpoints that predict together, their probabilities averaged tile by tile
(unetseg.inference.predictor). ``checkpoint=`` names one with a list (``checkpoint=[a.pt,b.pt]``) or with the
ensemble.yaml that a fold sweep writes (unetseg.reporting.sweeps): the file's format is here, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from unetseg.io.atomic import write_text_atomic
from unetseg.model.checkpoint import Checkpoint, checkpoint_in, find_checkpoint, load_checkpoint
from unetseg.runtime.console import console
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import user_path

ENSEMBLE_FILE = "ensemble.yaml"
FORMAT = "unetseg-ensemble"
_USE = "give the ensemble.yaml of a fold sweep, or a list of checkpoints: checkpoint=[a.pt,b.pt]"


@dataclass(frozen=True)
class Member:
    checkpoint: Path
    fold: int | None = None


def write_ensemble(path: Path, members: list[Member], folds: int | None, left_out: list[dict[str, Any]]) -> None:
    """ensemble.yaml: each member's checkpoint relative to the file's folder (a sweep folder moved or copied
    whole still works), its fold, and the jobs left out (failed ones) with why."""
    content = {
        "format": FORMAT,
        "folds": folds,
        "members": [{"checkpoint": m.checkpoint.relative_to(path.parent).as_posix(), "fold": m.fold} for m in members],
        "left_out": left_out,
    }
    header = (
        "# An ensemble of checkpoints: unetseg predict checkpoint=<this file> (or unetseg evaluate) averages their\n"
        "# probabilities. Checkpoint paths are relative to this file's folder.\n"
    )
    write_text_atomic(path, header + OmegaConf.to_yaml(OmegaConf.create(content)))


def read_ensemble(path: Path) -> list[Path]:
    """The member checkpoints an ensemble.yaml lists (relative paths against its folder; a member may be a
    run folder, as checkpoint= may), each checked to be there."""
    if not path.is_file():
        raise UserError(f"checkpoint={path} does not exist: {_USE}")
    try:
        content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:  # yaml's parser errors, undecodable bytes: all mean the same to the user
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path} is not readable YAML ({first}): {_USE}") from None
    members = content.get("members") if isinstance(content, dict) else None
    if not isinstance(content, dict) or content.get("format") != FORMAT or not isinstance(members, list):
        raise UserError(f"{path} is not a unetseg ensemble file (no format: {FORMAT} and members:): {_USE}")
    if not members:
        raise UserError(f"{path} lists no members (every fold job failed?): retrain the folds, or {_USE}")
    paths = []
    for index, member in enumerate(members):
        given = member.get("checkpoint") if isinstance(member, dict) else None
        if not isinstance(given, str) or not given:
            raise UserError(f"{path}: member {index} names no checkpoint (checkpoint: PATH); give each member one")
        target = Path(given).expanduser()
        paths.append(checkpoint_in(str(target if target.is_absolute() else path.parent / target)))
        if not paths[-1].is_file():
            raise UserError(f"{path}: member {index}'s checkpoint {paths[-1]} does not exist: was it moved or deleted?")
    return paths


def checkpoint_paths(given: Any, runs_root: str) -> list[Path]:
    """The checkpoints ``checkpoint=`` names for predict and evaluate: none given (the newest best.pt under
    ``runs_root``), a checkpoint or run folder, an ensemble.yaml (or a sweep folder holding one), or a list of
    these. Two or more make an ensemble; none is named twice."""
    if given is None or given == "":
        return [find_checkpoint(None, runs_root)]
    items = given if isinstance(given, (list, tuple)) else [given]
    paths = [path for item in items for path in _named(str(item))]
    twice = [path for index, path in enumerate(paths) if path in paths[:index]]  # paths resolved: user_path
    if twice:
        raise UserError(f"checkpoint= names {twice[0]} twice: name each ensemble member once")
    return paths


def _named(given: str) -> list[Path]:
    """One item of checkpoint=: an ensemble.yaml (or a sweep folder holding one) → its members, else the one
    checkpoint that a file or run folder names (unetseg.model.checkpoint.checkpoint_in)."""
    path = user_path(given)
    runs = [path / "checkpoints" / "best.pt", path / "best.pt"]
    if path.is_dir() and (path / ENSEMBLE_FILE).is_file() and not any(run.is_file() for run in runs):
        console.print(f"checkpoint={given} is a folder: using its {ENSEMBLE_FILE}, {path / ENSEMBLE_FILE}")
        path = path / ENSEMBLE_FILE
    return read_ensemble(path) if path.suffix in (".yaml", ".yml") else [checkpoint_in(given)]


def ensemble_name(given: Any, paths: list[Path]) -> str:
    """For the start-up line: "" for one checkpoint, else the ensemble and its size."""
    if len(paths) == 1:
        return ""
    source = "" if isinstance(given, (list, tuple)) else f" {given}"
    return f"ensemble{source} ({len(paths)} members)"


def load_members(paths: list[Path]) -> list[Checkpoint]:
    """Every checkpoint, loaded and checked to fit the first: the same input channels, classes (their number
    and names), training target and input normalisation, so that their probabilities can be averaged."""
    checkpoints = [load_checkpoint(path) for path in paths]
    for path, checkpoint in zip(paths[1:], checkpoints[1:], strict=True):
        problem = _difference(checkpoints[0], checkpoint)
        if problem:
            raise UserError(
                f"ensemble members {paths[0]} and {path} do not fit together: {problem}; ensemble only "
                "checkpoints trained for the same task (e.g. the folds of one sweep)"
            )
    return checkpoints


def _difference(first: Checkpoint, other: Checkpoint) -> str | None:
    """The first fact two members must share and do not, in words (``first``'s value, then ``other``'s)."""
    facts: list[tuple[str, object, object]] = [
        ("model.in_channels", first.model.in_channels, other.model.in_channels),
        ("model.num_classes", first.model.num_classes, other.model.num_classes),
        ("class names", first.class_names, other.class_names),
        ("target", first.target, other.target),
        ("normalisation", first.normalization.to_dict(), other.normalization.to_dict()),
    ]
    if first.target == "boundary":  # evaluate derives the boundary labels with it
        facts.append(("boundary width", first.boundary_width, other.boundary_width))
    for what, mine, theirs in facts:
        if mine != theirs:
            return f"{what} {mine} vs {theirs}"
    return None


def shared_threshold(checkpoints: list[Checkpoint]) -> tuple[float, str]:
    """The members' common threshold, or their mean when they differ, with a note that says so ("" if common)."""
    values = [checkpoint.threshold for checkpoint in checkpoints]
    if len(set(values)) == 1:
        return values[0], ""
    mean = sum(values) / len(values)
    return mean, f" (the mean of the members' {', '.join(f'{value:g}' for value in values)})"
