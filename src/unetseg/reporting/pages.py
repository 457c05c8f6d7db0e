"""Rendering report pages with Jinja2 templates (``reporting/templates/``): autoescaped HTML, the pictures
embedded as data URIs, so that a report is one file that opens anywhere, offline."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from unetseg.io.atomic import write_bytes_atomic

_environment: Environment | None = None


def number(value: Any, digits: int = 4) -> str:
    """A figure for a table: rounded, '–' where there is none (missing or not finite)."""
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    return str(value)


def duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "–"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else (f"{minutes} min {rest:02d} s" if minutes else f"{rest} s")


def data_uri(data: bytes, kind: str = "png") -> str:
    """A picture embedded in the page: ``kind`` png or jpeg."""
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def environment() -> Environment:
    global _environment
    if _environment is None:
        _environment = Environment(
            loader=PackageLoader("unetseg.reporting", "templates"),
            autoescape=select_autoescape(["html", "j2"]),
            undefined=StrictUndefined,  # a typo in a template fails the tests instead of printing nothing
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _environment.filters["number"] = number
        _environment.filters["duration"] = duration
    return _environment


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def write_page(path: Path, html: str) -> None:
    """Write a page atomically; a file name that is not valid UTF-8 shows as '?' instead of costing the page."""
    write_bytes_atomic(path, html.encode("utf-8", errors="replace"))
