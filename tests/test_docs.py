"""The README and docs/ stay true: every `unetseg` command in their bash blocks composes and passes the
command's checks (what `unetseg <command>` does before it runs), and every link to a docs page exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO
from unetseg.cli import COMMANDS
from unetseg.config import register_schemas
from unetseg.runner import preflight
from unetseg.runtime.paths import register_resolvers

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
HYDRA_COMMANDS = {"train", "predict", "evaluate", "export", "synthesize"}


def shell_commands(page: Path) -> list[str]:
    """The lines of a page's ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def unetseg_calls(page: Path) -> list[tuple[str, list[str]]]:
    """(command, arguments) of every `unetseg <command> ...` (also after torchrun, python -m, in loops)."""
    calls = []
    for line in shell_commands(page):
        loop = re.match(r"for (\w+) in (\S+)", line)
        if loop:  # `for p in fp32 bf16; do unetseg ... trainer.precision=$p`: check with the first value
            line = line.replace(f"${loop.group(1)}", loop.group(2))
        for part in re.split(r";|&&|\|\||\$\(", line):
            try:
                words = shlex.split(part)
            except ValueError:
                continue
            for index, word in enumerate(words[:-1]):
                if word.endswith("unetseg") and words[index + 1] in COMMANDS:
                    calls.append((words[index + 1], words[index + 2 :]))
                    break
    return calls


CALLS = [(page.name, command, args) for page in PAGES for command, args in unetseg_calls(page)]


def test_the_pages_hold_commands() -> None:
    assert len(CALLS) >= 20
    assert {page for page, _, _ in CALLS} >= {"README.md", "objects.md", "scaling-out.md", "evaluation.md"}


@pytest.mark.slow  # ~0.5 s per command (Hydra composes each): 20 s of make test-fast's minute
@pytest.mark.parametrize(("page", "command", "args"), CALLS, ids=[f"{p}: {c} {' '.join(a)}" for p, c, a in CALLS])
def test_every_documented_command_parses(
    page: str, command: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if command not in HYDRA_COMMANDS:
        return  # `unetseg report DIR` takes a folder (argparse): nothing to compose
    monkeypatch.chdir(tmp_path)  # run folders named in the pages are checked against this empty folder
    register_resolvers()
    register_schemas()
    flags = {"-m", "--multirun"}
    overrides = [arg for arg in args if arg not in flags and not arg.startswith("--") and arg not in ("job", "hydra")]
    if "--cfg" in args or "--help" in args:
        overrides = [arg for arg in overrides if "=" in arg]
    preflight(command, overrides, multirun=bool(flags & set(args)))


def test_the_tests_the_pages_cite_exist() -> None:
    """`tests/test_x.py::name` and `::name` (of the last file named before it) are real test functions."""
    cited = 0
    for page in PAGES:
        module = None
        for file, name in re.findall(r"(?:tests/)?(test_\w+\.py)|::(test_\w+)", page.read_text(encoding="utf-8")):
            if file:
                module = REPO / "tests" / file
                assert module.is_file(), f"{page.name} cites {file}"
            elif module is not None:
                assert f"def {name}(" in module.read_text(encoding="utf-8"), f"{page.name} cites {module.name}::{name}"
                cited += 1
    assert cited >= 10


def test_links_to_docs_pages_exist() -> None:
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).resolve().is_file(), f"{page.name} links to {target}"
