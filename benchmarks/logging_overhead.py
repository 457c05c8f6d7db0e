"""What seeing training costs: epoch time of the ISBI preset with no logger and with every logger, and the
share of a run spent on the always-on curves.png and report.html, measured in one run.

Each round trains ``experiment=isbi`` for ``--epochs`` epochs twice, alternating: with
``trainer.loggers=[]`` (curves.png and report.html only) and with ``trainer.loggers=[tensorboard,mlflow]``
(MLflow into a local SQLite store under the output folder). Per run it reads metrics.json (training wall time
and the time the trainer spent drawing curves and in the loggers) and train.log (the time report.html took).
Shares are of the training wall time; the MLflow store's one-off start-up (creating its database) is
outside the training loop and reported apart, as is the report.

    python benchmarks/logging_overhead.py --isbi ../shared/data/isbi2012/train [--epochs 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {"none": "trainer.loggers=[]", "all": "trainer.loggers=[tensorboard,mlflow]"}


def train(isbi: Path, epochs: int, loggers: str, run_dir: Path) -> dict[str, float]:
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "unetseg",
        "train",
        "experiment=isbi",
        f"data.root={isbi}",
        f"trainer.epochs={epochs}",
        SETTINGS[loggers],
        f"runs_root={run_dir.parent}",
        f"hydra.run.dir={run_dir}",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    process_s = time.perf_counter() - started
    summary = json.loads((run_dir / "metrics.json").read_text())
    report = re.search(r"report.html written in ([0-9.]+) s", (run_dir / "train.log").read_text())
    epoch_times = [json.loads(line)["epoch_time_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "process_s": process_s,
        "training_s": summary["wall_time_s"],
        "per_epoch_s": summary["wall_time_s"] / summary["epochs"],
        "train_and_validation_per_epoch_s": statistics.mean(epoch_times),
        "curves_s": summary["logging_s"]["curves"],
        "loggers_s": summary["logging_s"]["loggers"],
        "report_s": float(report.group(1)) if report else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isbi", type=Path, required=True, help="ISBI 2012 train folder (image/, label/)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmark-logging"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    for round_index in range(args.rounds):
        for name in SETTINGS:
            result = train(args.isbi.resolve(), args.epochs, name, args.out / f"{name}-{round_index}")
            runs[name].append(result)
            print(f"round {round_index + 1} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    none_epoch, all_epoch = median("none", "per_epoch_s"), median("all", "per_epoch_s")
    always_on = (median("none", "curves_s") + median("none", "report_s")) / median("none", "training_s")
    loggers_share = median("all", "loggers_s") / median("all", "training_s")
    summary = {
        "epochs": args.epochs,
        "rounds": args.rounds,
        "epoch_s_no_logger": round(none_epoch, 3),
        "epoch_s_every_logger": round(all_epoch, 3),
        "epoch_ratio_every_logger_vs_none": round(all_epoch / none_epoch, 4),
        "curves_s_per_run": round(median("none", "curves_s"), 3),
        "report_s_per_run": round(median("none", "report_s"), 3),
        "curves_and_report_share_of_training": round(always_on, 4),
        "loggers_share_of_training": round(loggers_share, 4),
        "process_s_no_logger": round(median("none", "process_s"), 2),
        "process_s_every_logger": round(median("all", "process_s"), 2),
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
