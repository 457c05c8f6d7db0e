"""The layout holds: each folder of src/unetseg is one stage of the pipeline, and imports run only downwards
(commands → sweep → reporting → training/inference → tracking/objects → scoring/model → data → io → config →
runtime)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "unetseg"
# Rank of each top-level module or folder: a module may import only from lower ranks (and its own folder).
RANKS = {
    "runtime": 0,
    "config": 1,
    "io": 2,
    "data": 3,
    "scoring": 4,
    "model": 4,
    "tracking": 5,
    "objects": 5,
    "training": 6,
    "inference": 6,
    "checks": 7,
    "reporting": 7,
    "planning": 7,
    "sweep": 8,
    "overrides": 8,
    "runner": 9,
    "commands": 10,
    "cli": 11,
    "__main__": 12,
}
LOWER_FOLDERS = ("io", "data", "scoring", "model", "runtime", "tracking", "objects")
UPPER_FOLDERS = ("training", "inference", "reporting", "planning", "commands")


def room_of(path: Path) -> str:
    """The top-level module or folder a source file belongs to (``__init__`` of the package: none)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_rooms(source: str, package: tuple[str, ...]) -> set[str]:
    """The unetseg rooms that a module's ``source`` imports, absolute or relative (``package``: the dotted
    package the module is in, e.g. ("unetseg", "model"))."""
    rooms = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = list(package[: len(package) - node.level + 1])
                names = [".".join([*base, *(node.module.split(".") if node.module else [])])]
            else:
                names = [node.module or ""]
            if names == ["unetseg"]:  # from unetseg import x: a room, or a name of the package (__version__)
                names = [f"unetseg.{alias.name if alias.name in RANKS else '__init__'}" for alias in node.names]
        rooms |= {name.split(".")[1] for name in names if name.startswith("unetseg.")}
    return rooms


def test_every_room_has_a_rank() -> None:
    rooms = {room_of(path) for path in PACKAGE.rglob("*.py")} - {"__init__"}
    assert rooms == set(RANKS), "a new top-level module or folder needs its place in RANKS"


def test_imports_run_only_downwards() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = room_of(path)
        if room == "__init__":
            continue
        package = path.relative_to(PACKAGE.parent).parts[:-1]
        for imported in imported_rooms(path.read_text(encoding="utf-8"), package) - {room, "__init__"}:
            if RANKS[imported] >= RANKS[room]:
                upward.append(f"{path.relative_to(PACKAGE)} imports unetseg.{imported}")
    assert not upward, upward


def test_the_check_sees_relative_and_package_imports() -> None:
    """The AST check would catch every import form the code could use."""
    source = "from ..training import trainer\nfrom unetseg import commands, __version__\nimport unetseg.inference.x\n"
    assert imported_rooms(source, ("unetseg", "model")) == {"training", "commands", "inference", "__init__"}
    assert imported_rooms("from .head import x\nfrom . import unet\n", ("unetseg", "model")) == {"model"}


def test_lower_folders_import_no_higher_stage() -> None:
    """Importing every module under io/, data/, scoring/, model/ and runtime/ in a fresh interpreter loads
    nothing from training/, inference/ or commands/."""
    script = f"""
import importlib, pkgutil, sys
for folder in {LOWER_FOLDERS!r}:
    package = importlib.import_module("unetseg." + folder)
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
loaded = sorted(n for n in sys.modules if n.startswith("unetseg.") and n.split(".")[1] in {UPPER_FOLDERS!r})
print(",".join(loaded))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"lower stages loaded: {result.stdout}"


def test_the_import_check_is_not_vacuous() -> None:
    """Importing a higher stage does show up in sys.modules, as the check above expects."""
    script = "import sys, unetseg.training.trainer; print('unetseg.training.losses' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "True", result.stderr
