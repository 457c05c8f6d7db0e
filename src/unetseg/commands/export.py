"""`unetseg export`: write a checkpoint as an ONNX or TorchScript model that runs without unetseg."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from unetseg.atomic import atomic_open
from unetseg.config import ExportConfig, check_export, to_typed
from unetseg.console import console
from unetseg.engine.checkpoint import load_checkpoint, newest_checkpoint
from unetseg.engine.export import (
    DEFAULT_SUFFIXES,
    SUFFIXES,
    TOLERANCE,
    Exported,
    export,
    metadata,
    require_exporter,
)
from unetseg.errors import UserError
from unetseg.paths import user_path
from unetseg.runner import run_command

log = logging.getLogger(__name__)


def output_path(output: str | None, fmt: str, checkpoint_path: Path, run_dir: Path) -> Path:
    """Where to write: ``output`` as a file, or ``<checkpoint stem><suffix>`` in ``output`` (a folder) or the run
    directory."""
    default_name = checkpoint_path.stem + DEFAULT_SUFFIXES[fmt]
    if output is None:
        return run_dir / default_name
    path = user_path(output)
    if path.is_dir():
        return path / default_name
    if path.suffix != SUFFIXES[fmt]:
        other = next(name for name in SUFFIXES if name != fmt)
        raise UserError(
            f"output={output}: format={fmt} writes a {SUFFIXES[fmt]} file; name it {path.stem}{SUFFIXES[fmt]}, give "
            f"an existing folder, or set format={other}"
        )
    return path


def refuse_to_replace(output: Path, checkpoint_path: Path, overwrite: bool) -> None:
    """Checked before the (slow) export, so that a refusal comes at once."""
    if output == checkpoint_path:
        raise UserError(f"output {output} is the checkpoint itself: choose another output=")
    if output.exists() and not overwrite:
        raise UserError(f"output {output} already exists: choose another output= or set overwrite=true")


def describe_check(exported: Exported) -> str:
    if not exported.max_difference:
        return "not checked against PyTorch: onnxruntime is not installed (pip install 'unetseg[onnx]')"
    sizes, worst = ", ".join(exported.max_difference), max(exported.max_difference.values())
    return f"matches PyTorch within {TOLERANCE:g} at {sizes} (max |difference| {worst:.1e})"


def export_command(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    typed: ExportConfig = to_typed(cfg)
    check_export(typed)
    fmt = typed.format.value
    require_exporter(fmt)
    if typed.checkpoint:
        checkpoint_path = user_path(typed.checkpoint)
    else:
        checkpoint_path = newest_checkpoint(user_path(typed.runs_root))
        console.print(f"checkpoint not given: using the newest, {checkpoint_path}")
    checkpoint = load_checkpoint(checkpoint_path)
    output = output_path(typed.output, fmt, checkpoint_path, run_dir)
    refuse_to_replace(output, checkpoint_path, typed.overwrite)

    console.print(f"exporting {checkpoint_path} as {fmt} …")
    exported = export(checkpoint, fmt, typed.opset)
    with atomic_open(output) as handle:
        handle.write(exported.data)

    meta = metadata(checkpoint)
    summary = f"exported {fmt} in {exported.seconds:.1f} s → {output} ({len(exported.data) / 2**20:.1f} MiB)"
    check = describe_check(exported)
    console.print(summary)
    console.print(check)
    console.print(f"input  {meta['input']}")
    console.print(f"output {meta['output']}; {meta['decision']}")
    log.info("%s; %s (checkpoint %s)", summary, check, checkpoint_path)
    return {"output": str(output), "seconds": exported.seconds, "max_difference": exported.max_difference}


def main(argv: list[str]) -> None:
    run_command("export", export_command, argv)
