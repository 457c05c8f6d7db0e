"""The terminal: the config tree, progress bars and one-line errors (score tables: unetseg.scoring.tables)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
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
