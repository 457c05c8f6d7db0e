"""`unetseg <command> [overrides]`: dispatch only. Hydra has no subcommands, so the command word is
popped here and the rest goes to that command's Hydra entry point."""

from __future__ import annotations

import difflib
import importlib
import os
import sys

from unetseg import __version__
from unetseg.runtime.interrupts import Interrupted

COMMANDS = {
    "train": "train a U-Net (unetseg train --help)",
    "predict": "write masks for images with a trained checkpoint (unetseg predict --help)",
    "evaluate": "score a checkpoint on labelled images: pixel error, Dice, IoU, Rand error, V_info",
    "synthesize": "write the built-in synthetic EM-like data as image/ and label/ folders",
    "export": "write a checkpoint as an ONNX or TorchScript model (unetseg export --help)",
    "report": "write report.html for a training run or a sweep: curves, figures, validation gallery",
    "plan": "the recipe experiment=auto would train on your data on this machine, with the reasons",
    "cache": "decode a training folder into the disk cache ahead of time (data sets larger than memory)",
}

USAGE = (
    f"""unetseg {__version__}: train U-Nets for image segmentation and predict masks (Hydra configs).

Usage: unetseg <command> [KEY=VALUE ...]

Commands:
"""
    + "".join(f"  {name:<11} {text}\n" for name, text in COMMANDS.items())
    + """
Examples:
  unetseg train experiment=quickstart
  unetseg train data=isbi data.root=path/to/train optim.lr=1e-5
  unetseg train -m model=bilinear,transposed
  unetseg predict input=data/test
  unetseg evaluate checkpoint=outputs/train/RUN/checkpoints/best.pt data=isbi data.root=path/to/train
  unetseg export format=onnx
  unetseg report outputs/train/RUN

Shell completion (bash): eval "$(unetseg -sc install=bash)"
"""
)


def _complete(argv: list[str]) -> None:
    """Shell completion: Hydra's script calls `unetseg -sc query=bash` with the line in COMP_LINE."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    if (
        any(arg.startswith("query") for arg in argv)
        and len(words) >= 2
        and words[1] in COMMANDS
        and (len(words) > 2 or line.endswith(" "))
    ):
        command = words[1]
        os.environ["COMP_LINE"] = line.replace(f" {command}", "", 1)
        _dispatch(command, argv)
    if any(arg.startswith("query") for arg in argv):
        partial = words[1] if len(words) == 2 and not line.endswith(" ") else ""
        print(" ".join(name for name in COMMANDS if name.startswith(partial)))
        sys.exit(0)
    _dispatch("train", argv)  # install/uninstall: any command's Hydra prints the same script


def _dispatch(command: str, argv: list[str]) -> None:
    module = importlib.import_module(f"unetseg.commands.{command}")
    module.main(argv)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    if args[0] in ("-V", "--version"):
        print(f"unetseg {__version__}")
        return
    if args[0] in ("-sc", "--shell-completion"):
        _complete(args)
        return
    command, rest = args[0], args[1:]
    if command in COMMANDS:
        try:
            _dispatch(command, rest)
        except Interrupted as stop:  # stopped at a safe point: the command says what it kept and how to go on
            print(
                f"unetseg {command}: stopped by {stop.name}{f'; {stop.detail}' if stop.detail else ''}", file=sys.stderr
            )
            sys.exit(stop.exit_status)
        except BrokenPipeError:  # `unetseg ... | head`: the reader left; the work is done, the rest is not read
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            sys.exit(141)  # 128 + SIGPIPE, as a shell reports a command its reader left
        except KeyboardInterrupt:  # Ctrl-C elsewhere: one line, not a traceback; every file is written atomically
            print(f"unetseg {command}: interrupted; the files already written are complete", file=sys.stderr)
            sys.exit(130)
        return
    close = difflib.get_close_matches(command, COMMANDS, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    print(
        f"unetseg: error: unknown command '{command}': {hint}choose one of {', '.join(COMMANDS)} (see unetseg --help)",
        file=sys.stderr,
    )
    sys.exit(2)
