"""Training on a folder larger than memory: the disk cache's memory, speed and second start, in one run.

A folder of ``--images`` generated 8-bit images of ``--size``² with cell-like masks is written; with the border
weight map of ``experiment=isbi`` (9 bytes per pixel in memory) the default 400 images of 2048² decode to 15.1 GB.
The real CLI then trains ``experiment=isbi`` (256² patches, batches of 8, elastic deformation) in a child process
held to a memory budget of ``--budget-gib`` by a memory cgroup (the kernel kills the run if it takes more; without
a writable cgroup the budget is only measured against):

1. the big folder, the classic 64-wide net, ``data.in_memory=auto``: the run finds the set too large and fills the
   disk cache (decoding each file once) before training; peak resident memory (VmHWM) against the budget;
2. the big folder again with the 16-wide net: the cache is there, nothing is decoded (time to the first step);
3. a small folder (``--small-images`` of the same images, small enough for both paths) with each net, in memory
   and from the cache: steps per second of the second epoch (the first warms up), cache against memory.

    python benchmarks/big_data.py [--images 400] [--size 2048] [--budget-gib 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_memory import CHILD, synthetic_image  # noqa: E402


def cell_mask(size: int, seed: int) -> np.ndarray:
    """0/255 cell-like regions (label 255 = cell, 0 = membrane and background, as ISBI)."""
    rng = np.random.default_rng(seed + 10_000)
    field = cv2.GaussianBlur(rng.random((size, size), np.float32), (0, 0), max(2.0, size / 170))
    return np.where(field > np.median(field), 255, 0).astype(np.uint8)


def write_folder(root: Path, count: int, size: int, first: int = 0) -> None:
    for sub in ("image", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    fast_png = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    for index in range(first, first + count):
        if (root / "label" / f"{index}.png").is_file():
            continue  # --workdir kept from an earlier run
        cv2.imwrite(str(root / "image" / f"{index}.png"), synthetic_image(size, index), fast_png)
        cv2.imwrite(str(root / "label" / f"{index}.png"), cell_mask(size, index), fast_png)


class Budget:
    """A memory cgroup (v1 or v2) holding a child process to ``limit`` bytes; None where none can be made."""

    def __init__(self, limit: int) -> None:
        self.limit, self.folder, self.version = limit, None, 0
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").is_file():
                base, self.version = Path("/sys/fs/cgroup"), 2
            elif "memory" in controllers.split(","):
                base, self.version = Path("/sys/fs/cgroup/memory"), 1
            else:
                continue
            folder = base / path.lstrip("/") / f"unetseg-bench-{os.getpid()}"
            try:
                folder.mkdir()
                (folder / ("memory.max" if self.version == 2 else "memory.limit_in_bytes")).write_text(str(limit))
                self.folder = folder
                return
            except OSError:
                continue

    def enter(self) -> None:
        """In the child, before exec: join the cgroup."""
        if self.folder is not None:
            (self.folder / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int | None:
        """The cgroup's peak charge (page cache included) since it was made."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.folder / name).read_text()) if self.folder else None
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self.folder is not None:
            with contextlib.suppress(OSError):  # still in use: a child the kernel has not reaped yet
                self.folder.rmdir()


def train(
    workdir: Path, name: str, data: Path, val: Path, width: int, steps: int, epochs: int, budget: Budget, *extra: str
) -> dict:
    """One `unetseg train` run in the budget: its summary, peak RSS, and the steps per second of its fastest epoch
    after the first (which warms up)."""
    run = workdir / "runs" / name
    peak_file = workdir / f"peak_{name}.txt"
    command = [
        sys.executable,
        "-c",
        CHILD,
        "train",
        "experiment=isbi",
        f"data.root={data}",
        f"data.val_root={val}",
        f"model.base_channels={width}",
        f"data.samples_per_epoch={steps * 8}",
        f"trainer.epochs={epochs}",
        "trainer.object_scores=false",
        "trainer.save_last=false",
        f"hydra.run.dir={run}",
        *extra,
    ]
    env = {**os.environ, "UNETSEG_PEAK_FILE": str(peak_file), "COLUMNS": "200"}
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, env=env, preexec_fn=budget.enter, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        killed = " (killed: over the memory budget?)" if result.returncode in (-9, 137) else ""
        raise SystemExit(
            f"{name} failed{killed}, rc {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    summary = json.loads((run / "metrics.json").read_text())
    fastest = min(json.loads(line)["epoch_time_s"] for line in (run / "metrics.jsonl").read_text().splitlines()[1:])
    said = " ".join(result.stdout.split())
    storage = re.search(r"(in memory \(.*?\)|read from the disk cache .*?\))", said)
    return {
        "run": name,
        "width": width,
        "seconds": round(seconds, 1),
        "start_s": round(summary["start_s"], 2),
        "fastest_epoch_s": fastest,
        "steps_per_s": round(steps / fastest, 4),
        "peak_rss_mib": round(int(peak_file.read_text()) / 1024, 1),
        "cgroup_peak_mib": round(budget.peak() / 2**20, 1) if budget.peak() else None,
        "decoded_now": "caching" in result.stdout,
        "storage": storage[1] if storage else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--budget-gib", type=float, default=4.0)
    parser.add_argument("--small-images", type=int, default=24, help="the folder both paths train on")
    parser.add_argument("--widths", type=int, nargs=2, default=[64, 16], help="the two nets: classic, narrow")
    parser.add_argument("--steps", type=int, nargs=2, default=[6, 40], help="steps per epoch of each net")
    parser.add_argument("--rounds", type=int, default=2, help="small-folder runs per path, alternating")
    parser.add_argument(
        "--memory-share", type=float, default=0.5, help="data.memory_share of the big folder's runs (auto decides)"
    )
    parser.add_argument("--workdir", type=Path, help="keep the folders, cache and runs here (default: temporary)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    budget_bytes = int(args.budget_gib * 2**30)
    with tempfile.TemporaryDirectory(prefix="unetseg-bigdata-") as temporary:
        workdir = (args.workdir or Path(temporary)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        os.environ["UNETSEG_CACHE_DIR"] = str(workdir / "cache")
        started = time.perf_counter()
        write_folder(workdir / "big", args.images, args.size)
        small = workdir / "small"
        for sub in ("image", "label"):  # the first images of the big folder, linked: no second copy
            (small / sub).mkdir(parents=True, exist_ok=True)
            for index in range(args.small_images):
                link = small / sub / f"{index}.png"
                if not link.exists():
                    link.symlink_to(workdir / "big" / sub / f"{index}.png")
        write_folder(workdir / "val", 1, 256, first=args.images)  # one small validation image: validation is cheap
        generated = time.perf_counter() - started
        decoded = args.images * args.size**2 * 9
        budget = Budget(budget_bytes)
        enforced = budget.folder is not None
        print(
            f"unetseg train experiment=isbi on {args.images} images of {args.size}² (8-bit, {decoded / 1e9:.1f} GB "
            f"decoded with border weights) in a {args.budget_gib:g} GiB budget "
            f"({'cgroup v' + str(budget.version) if enforced else 'NOT enforced: no writable memory cgroup'}); "
            f"folders written in {generated:.0f} s; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
            flush=True,
        )
        (wide, narrow), (wide_steps, narrow_steps) = args.widths, args.steps
        rows = []
        try:
            plan = [
                (f"big-{wide}-first", workdir / "big", wide, wide_steps, 2, "data.in_memory=auto"),
                (f"big-{narrow}-second", workdir / "big", narrow, narrow_steps, 2, "data.in_memory=auto"),
            ]
            for round_ in range(1, args.rounds + 1):  # alternating, so a busy spell on this shared machine hits both
                for width, steps in ((wide, wide_steps), (narrow, narrow_steps)):
                    for path, storage in (("memory", "true"), ("cache", "false")):
                        plan.append(
                            (f"small-{width}-{path}-{round_}", small, width, steps, 3, f"data.in_memory={storage}")
                        )
            for name, data, width, steps, epochs, storage in plan:
                budget.close()
                budget = Budget(budget_bytes)  # a fresh cgroup per run: its peak is that run's
                share = f"data.memory_share={args.memory_share}"  # (the small runs name their path: no effect there)
                row = train(workdir, name, data, workdir / "val", width, steps, epochs, budget, storage, share)
                rows.append(row)
                print(
                    f"  {name:<16} {row['seconds']:>6.1f} s  first step after {row['start_s']:>6.1f} s  "
                    f"{row['steps_per_s']:.3f} steps/s  peak RSS {row['peak_rss_mib']:>7.1f} MiB"
                    f"{'  (decoded files)' if row['decoded_now'] else ''}  · {row['storage']}",
                    flush=True,
                )
        finally:
            budget.close()
        by_name = {row["run"]: row for row in rows}

        def best(width: int, path: str, key: str) -> float:
            """The path's best round: the fastest steps, the highest peak (both are what the path can do)."""
            return max(by_name[f"small-{width}-{path}-{r}"][key] for r in range(1, args.rounds + 1))

        ratios = {
            width: round(best(width, "cache", "steps_per_s") / best(width, "memory", "steps_per_s"), 3)
            for width in args.widths
        }
        small_mpx = args.small_images * args.size**2 / 1e6
        memory_per_mpx = {
            width: round((best(width, "memory", "peak_rss_mib") - best(width, "cache", "peak_rss_mib")) / small_mpx, 2)
            for width in args.widths
        }
        peak = max(by_name[f"big-{wide}-first"]["peak_rss_mib"], by_name[f"big-{narrow}-second"]["peak_rss_mib"])
        print(
            f"  steps/s, cache ÷ memory: {wide}-wide {ratios[wide]:.3f}, {narrow}-wide {ratios[narrow]:.3f} · peak RSS "
            f"on the big folder {peak:.0f} MiB of the {args.budget_gib * 1024:.0f} MiB budget · in memory costs "
            f"{memory_per_mpx[wide]:.2f} / {memory_per_mpx[narrow]:.2f} MiB more per megapixel than the cache "
            f"({wide}- / {narrow}-wide)"
        )
        results = {
            "images": args.images,
            "size": args.size,
            "decoded_gb": round(decoded / 1e9, 2),
            "budget_gib": args.budget_gib,
            "budget_enforced": enforced,
            "cache_gb": round(sum(f.stat().st_size for f in (workdir / "cache").rglob("*") if f.is_file()) / 1e9, 2),
            "runs": rows,
            "cache_over_memory_steps_per_s": ratios,
            "memory_mib_per_megapixel_over_cache": memory_per_mpx,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        }
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
