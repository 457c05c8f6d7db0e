"""`unetseg report RUN_DIR | SWEEP_DIR`: (re)write the report.html of a training run or of a sweep.

Not a Hydra command: it takes a folder that training already made (by this or an earlier version of
unetseg) and needs no config of its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from unetseg.checks import check_device
from unetseg.reporting.run_dir import is_run_dir, is_sweep_dir
from unetseg.reporting.run_report import write_run_report
from unetseg.reporting.sweeps import write_sweep_report
from unetseg.runtime.console import console, print_error
from unetseg.runtime.device import resolve_device
from unetseg.runtime.errors import EXIT_USER_ERROR, UserError
from unetseg.runtime.paths import user_path


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog="unetseg report",
        description="Write report.html for a training run (curves, figures, validation gallery) or a sweep "
        "(one row per job, the sweep chart). The page is one self-contained file.",
        epilog="Examples: unetseg report outputs/train/2026-11-27_10-00-00_1234 · unetseg report outputs/sweep/<sweep>",
    )
    parse.add_argument("folder", help="a training run directory (outputs/train/<run>) or a sweep folder")
    parse.add_argument(
        "--images",
        type=int,
        default=None,
        help="most validation images in the gallery (default: the run's trainer.report_images)",
    )
    parse.add_argument("--device", default="auto", help="device for the gallery's predictions (default auto)")
    return parse


def report(folder: Path, images: int | None, device: str) -> Path:
    if images is not None and images < 0:
        raise UserError(f"--images {images}: give 0 or more")
    check_device(device, "--device")
    resolve_device(device)  # an explicit device that is not here is an error, not a report without gallery
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give a training run (outputs/train/<run>) or a sweep folder")
    if not is_run_dir(folder):
        if is_sweep_dir(folder):
            path, rows = write_sweep_report(folder)
            console.print(f"sweep report ({len(rows)} jobs): {path}")
            return path
        runs = sorted((p for p in folder.iterdir() if p.is_dir() and is_run_dir(p)), key=lambda p: p.stat().st_mtime)
        if runs:
            raise UserError(f"{folder} holds training runs, it is not one: give one, e.g. unetseg report {runs[-1]}")
    path, gallery_note = write_run_report(folder, images, device)
    if gallery_note:
        console.print(f"[yellow]report without the gallery:[/] {gallery_note}")
    console.print(f"report: {path}")
    return path


def main(argv: list[str]) -> NoReturn:
    parse = parser()

    def one_line_error(message: str) -> NoReturn:
        print_error("report", f"{message}; see unetseg report --help")
        sys.exit(EXIT_USER_ERROR)

    parse.error = one_line_error  # type: ignore[method-assign]
    args = parse.parse_args(argv)
    try:
        report(user_path(args.folder), args.images, args.device)
    except UserError as error:
        print_error("report", str(error))
        sys.exit(EXIT_USER_ERROR)
    sys.exit(0)
