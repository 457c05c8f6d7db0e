"""`unetseg export`: write a checkpoint as an ONNX or TorchScript model that runs without unetseg."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from unetseg.config import ExportConfig
from unetseg.inference.export import (
    DEFAULT_SUFFIXES,
    SUFFIXES,
    TOLERANCE,
    Exported,
    export,
    metadata,
    require_exporter,
)
from unetseg.io.atomic import atomic_open, refuse_to_overwrite
from unetseg.model.checkpoint import find_checkpoint, load_checkpoint
from unetseg.runner import run_command
from unetseg.runtime.console import console
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import user_path

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


def describe_check(exported: Exported) -> str:
    if not exported.max_difference:
        return "not checked against PyTorch: onnxruntime is not installed (pip install 'unetseg[onnx]')"
    sizes, worst = ", ".join(exported.max_difference), max(exported.max_difference.values())
    return f"matches PyTorch within {TOLERANCE:g} at {sizes} (max |difference| {worst:.1e})"


def export_command(cfg: ExportConfig, run_dir: Path) -> dict[str, Any]:
    fmt = cfg.format.value
    require_exporter(fmt)
    checkpoint_path = find_checkpoint(cfg.checkpoint, cfg.runs_root)
    checkpoint = load_checkpoint(checkpoint_path)
    output = output_path(cfg.output, fmt, checkpoint_path, run_dir)
    if output == checkpoint_path:
        raise UserError(f"output {output} is the checkpoint itself: choose another output=")
    refuse_to_overwrite([output], cfg.overwrite)  # before the (slow) export, so that a refusal comes at once

    console.print(f"exporting {checkpoint_path} as {fmt} …")
    exported = export(checkpoint, fmt, cfg.opset)
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
