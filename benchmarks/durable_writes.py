"""What fsync costs a checkpoint write: last.pt of the classic 64-wide U-Net (weights + RMSprop state) written
atomically as training writes it, with ``durable=True`` (fsync of the file before the rename and of the folder
after it, what unetseg does) against ``durable=False`` (the rename alone), alternating rounds in one run.

    python benchmarks/durable_writes.py [--folder DIR] [--rounds 5] [--json out.json]

The folder decides the answer (a local SSD, a network file system, a tmpfs where fsync is free): give the one
your runs write to.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from unetseg.config import ModelSpec
from unetseg.data.normalize import PercentileNormalizer
from unetseg.io.atomic import atomic_open
from unetseg.model import build_network
from unetseg.model.checkpoint import Checkpoint


def last_checkpoint() -> dict:
    """A classic-net last.pt as a dict: weights, and RMSprop's state after one step."""
    spec = ModelSpec("bilinear", 1, 1, 64, 4)
    network = build_network(spec)
    optimizer = torch.optim.RMSprop(network.parameters(), lr=1e-5, momentum=0.9, weight_decay=1e-8)
    network(torch.zeros(1, 1, 64, 64)).mean().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
    checkpoint = Checkpoint(
        network.state_dict(), spec, PercentileNormalizer(1, 99), ["membrane", "cell"], 0.5, 1, {}, training_state=state
    )
    return checkpoint.to_dict()


def write(payload: dict, path: Path, durable: bool) -> float:
    started = time.perf_counter()
    with atomic_open(path, durable=durable) as handle:
        torch.save(payload, handle)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    payload = last_checkpoint()
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        target = Path(folder) / "last.pt"
        write(payload, target, False)  # warm the page cache and the file system
        times: dict[str, list[float]] = {"rename only": [], "fsync + rename": []}
        for _ in range(args.rounds):
            times["rename only"].append(write(payload, target, False))
            times["fsync + rename"].append(write(payload, target, True))
        size_mb = target.stat().st_size / 1e6
    result = {
        "file_mb": round(size_mb, 1),
        "folder": str(args.folder or tempfile.gettempdir()),
        **{
            name: {"median_s": round(statistics.median(v), 3), "rounds": [round(x, 3) for x in v]}
            for name, v in times.items()
        },
    }
    result["fsync_costs_s"] = round(result["fsync + rename"]["median_s"] - result["rename only"]["median_s"], 3)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
