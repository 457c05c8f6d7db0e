"""Hydra's override grammar and file paths: which characters a value cannot hold unquoted, and the quoted form
to type instead (``'input="data/scan (1).png"'``), for the one-line errors and for commands unetseg prints."""

from __future__ import annotations

import re
import shlex

# Quoting advice: Hydra's override grammar reads these characters as syntax in an unquoted value (a comma makes
# a sweep, "${" an interpolation); non-ASCII letters it cannot read at all. Quoted, a value may hold any of them.
_UNQUOTED_SYNTAX = frozenset("!\"#&'(),;<=>[]^`{}~")
PATH_KEYS = frozenset(
    {
        "input",
        "output",
        "checkpoint",
        "labels",
        "runs_root",
        "data.root",
        "data.val_root",
        "trainer.resume",
        "hydra.run.dir",
        "hydra.sweep.dir",
    }
)
PATH_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".pt", ".pth", ".onnx", ".yaml", ".yml")


def _first_unquotable(value: str) -> str | None:
    """The first character (or "${") of ``value`` that Hydra cannot read unquoted; None if it reads it all."""
    for index, char in enumerate(value):
        if value.startswith("${", index):
            return "${"
        if char in _UNQUOTED_SYNTAX or not char.isascii():
            return char
    return None


def hydra_quoted(override: str) -> str:
    """``KEY=VALUE`` as Hydra reads it with any characters in VALUE, ready to paste into a POSIX shell:
    ``'KEY="VALUE"'``, with Hydra's escapes (``\\"``, ``\\${``, backslashes before a quote doubled)."""
    head, _, value = override.partition("=")
    value = value.replace("${", "\\${")
    value = re.sub(r'(\\*)("|$)', lambda m: m.group(1) * 2 + ("\\" + m.group(2) if m.group(2) else ""), value)
    return shlex.quote(f'{head}="{value}"')


def quoting_advice(override: str, any_value: bool = False) -> str | None:
    """For ``KEY=VALUE`` whose value looks like a path (or any plain value with ``any_value``) and holds characters
    Hydra cannot read unquoted: one line saying which, and the quoted form to type. None otherwise."""
    match = re.fullmatch(r"(\+\+|\+|~)?([^=]+)=(.*)", override, re.DOTALL)
    if not match:
        return None
    key, value = match.group(2).strip(), match.group(3).strip()
    if not value or value[0] in "'\"[{":  # quoted already, or a list or dict: not a single value to quote
        return None
    path_like = key in PATH_KEYS or "/" in value or "\\" in value or value.lower().endswith(PATH_SUFFIXES)
    bad = _first_unquotable(value)
    if bad is None or not (path_like or (any_value and not re.match(r"[-+.\d]", value))):  # no "1e-3)" as text
        return None
    what = "the path" if path_like else "the value"
    if bad == ",":
        reason = 'Hydra reads "," unquoted as a list of values to sweep over'
    elif bad == "${":
        reason = 'Hydra reads "${" as an interpolation'
        what += ' (a quoted "\\${" stays as typed)'
    else:
        shown = f"'{bad}'" if bad == '"' else f'"{bad}"'
        reason = f"Hydra cannot read {shown} unquoted in a value"
    return f"{override}: {reason}; quote {what}: {hydra_quoted(override)}"
