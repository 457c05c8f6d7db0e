"""Scores as a rich table: one row per image (or epoch), one column per score that some row has."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rich.table import Table

from unetseg.scoring.names import validation_scores


def metrics_table(title: str, rows: Sequence[tuple[str, Mapping[str, float]]], class_names: Sequence[str]) -> Table:
    """One row per (label, scores); a column for every table score that some row has (NaN shows as n/a)."""
    shown = [score for score in validation_scores(class_names) if score.in_tables]
    columns = [score for score in shown if any(score.key in m for _, m in rows)]
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for score in columns:
        table.add_column(score.title, justify="right")
    for label, metrics in rows:
        cells = [label]
        for score in columns:
            value = metrics.get(score.key, math.nan)
            cells.append("n/a" if math.isnan(value) else f"{value:.4f}")
        table.add_row(*cells)
    return table
