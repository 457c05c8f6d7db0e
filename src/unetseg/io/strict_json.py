"""JSON that every JSON reader accepts: an undefined number (NaN, ±inf) is written as ``null``.

Python's ``json`` writes ``NaN`` by default, which is not JSON (jq, JavaScript's JSON.parse and most
languages refuse the whole file). unetseg's scores can be undefined (e.g. the matched IoU of an image with no
match), so every JSON file unetseg writes goes through :func:`to_json`.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (also inside dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def to_json(value: Any, indent: int | None = None) -> str:
    """Strict JSON text (``allow_nan=False`` after :func:`finite_or_none`: a NaN that slips through is a bug)."""
    return json.dumps(finite_or_none(value), indent=indent, allow_nan=False)
