"""Everything the user sees: the config tree, progress bars, metric tables and one-line errors."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.tree import Tree

# Piped output (CI logs, tests) gets a wide fixed width so tables and paths are not wrapped at 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
error_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def print_error(command: str, message: str) -> None:
    """The one line a user sees for bad input: what is wrong and how to fix it."""
    error_console.print(f"[bold red]unetseg {command}: error:[/] {escape(message)}", soft_wrap=True)


def config_tree(config: Mapping[str, Any], title: str = "config") -> Tree:
    tree = Tree(f"[bold]{title}[/]")

    def add(node: Tree, value: Any) -> None:
        for key, child in value.items():
            if isinstance(child, Mapping):
                add(node.add(f"[cyan]{key}[/]"), child)
            else:
                node.add(f"[cyan]{key}[/]: {escape(repr(child) if isinstance(child, str) else str(child))}")

    add(tree, config)
    return tree


def progress_bars() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=console.quiet,  # ranks other than 0 under torchrun
    )


def score_columns(class_names: Sequence[str]) -> list[tuple[str, str]]:
    """(column title, metrics key) of every score, in the order tables show them."""
    per_class = [(f"{kind} {name}", f"{kind.lower()}_{name}") for name in class_names for kind in ("Dice", "IoU")]
    return [
        ("loss", "val_loss"),
        ("pixel error", "pixel_error"),
        ("Dice", "dice"),
        ("IoU", "iou"),
        *per_class,
        ("Rand error", "rand_error"),
        ("V_info", "v_info"),
    ]


def metrics_table(title: str, rows: Sequence[tuple[str, Mapping[str, float]]], class_names: Sequence[str]) -> Table:
    """One row per (label, scores); a column for every score that some row has (NaN shows as n/a)."""
    columns = [(title_, key) for title_, key in score_columns(class_names) if any(key in m for _, m in rows)]
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for column_title, _ in columns:
        table.add_column(column_title, justify="right")
    for label, metrics in rows:
        cells = [label]
        for _, key in columns:
            value = metrics.get(key, math.nan)
            cells.append("n/a" if math.isnan(value) else f"{value:.4f}")
        table.add_row(*cells)
    return table
