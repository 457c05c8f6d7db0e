"""Peak memory and time of `unetseg predict` on one synthetic 8-bit image per size (1k, 4k and 8k square).

For each size a synthetic grey 8-bit PNG is written, and the real CLI predicts it in a child process with
an untrained checkpoint of the chosen width (the default: the classic 64-wide U-Net, 13.4 M parameters;
the weights do not change time or memory). The child reports its own peak resident set (VmHWM from
/proc/self/status, read when it exits: unlike ru_maxrss, it does not inherit this process's size across
fork and exec). Reported per size: wall time, peak MiB, MiB per megapixel, and between sizes the growth
in MiB per added megapixel, which stays near what the outputs themselves take (1 MiB per megapixel for a
uint8 mask; the 8-bit input is another).

Objects: ``--checkpoint`` takes a trained checkpoint instead (e.g. one of ``experiment=nuclei``) and
``--image nuclei`` a mosaic of synthetic 16-bit nuclei images (256² tiles, 16 distinct ones), so that
``--save mask instances objects`` makes and measures real objects (tens of thousands at 8192²).

    python benchmarks/predict_memory.py [--sizes 1024 4096 8192] [--base-channels 64] [--json out.json]
    python benchmarks/predict_memory.py --checkpoint RUN/checkpoints/best.pt --image nuclei \
        --save mask instances objects --sizes 4096 8192
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from unetseg.config import ModelSpec
from unetseg.data.normalize import PercentileNormalizer
from unetseg.data.synthetic import nuclei_sample
from unetseg.inference.sliding_window import plan_tiles
from unetseg.model import build_network
from unetseg.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

# Runs `python -m unetseg ARGS` in this process and, at exit, writes its VmHWM (KiB) to the file named
# in UNETSEG_PEAK_FILE.
CHILD = """
import atexit, os, runpy, sys

def report_peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(os.environ["UNETSEG_PEAK_FILE"], "w").write(line.split()[1])

atexit.register(report_peak)
sys.argv = ["unetseg", *sys.argv[1:]]
runpy.run_module("unetseg", run_name="__main__", alter_sys=True)
"""


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """A (size, size) uint8 image with structure at several scales (smooth blobs, edges, noise)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), np.float32)
    for cells, weight in ((max(2, size // 256), 0.6), (max(2, size // 32), 0.3)):
        coarse = rng.random((cells, cells), np.float32)
        image += weight * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    image += 0.1 * rng.random((size, size), np.float32)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def nuclei_mosaic(size: int) -> np.ndarray:
    """A (size, size) uint16 mosaic of synthetic nuclei images (16 distinct 256² tiles, cycled)."""
    tiles = [nuclei_sample(2000, index, 256)[0] for index in range(16)]
    cells = -(-size // 256)
    rows = [np.hstack([tiles[(row * 7 + column) % 16] for column in range(cells)]) for row in range(cells)]
    return np.vstack(rows)[:size, :size]


def png_size(path: Path) -> tuple[int, int]:
    """(height, width) from a PNG's header, without decoding it."""
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return height, width


def run_size(size: int, checkpoint: Path, workdir: Path, args: argparse.Namespace) -> dict[str, object]:
    image = workdir / "images" / f"synthetic_{size}.png"
    image.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(image), nuclei_mosaic(size) if args.image == "nuclei" else synthetic_image(size))
    output = workdir / "masks"
    peak_file = workdir / f"peak_{size}.txt"
    command = [
        sys.executable,
        "-c",
        CHILD,
        "predict",
        f"input={image}",
        f"checkpoint={checkpoint}",
        f"output={output}",
        f"tile_size={args.tile_size}",
        f"overlap={args.overlap}",
        f"batch_size={args.batch_size}",
        f"precision={args.precision}",
        f"backend={args.backend}",
        f"save=[{','.join(args.save)}]",
        "overwrite=true",
    ]
    started = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=workdir,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "UNETSEG_PEAK_FILE": str(peak_file),
            "COLUMNS": "200",
            "UNETSEG_CACHE_DIR": str(workdir / "cache"),  # OpenVINO: converted at the first size, reused after
        },
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"predict failed at {size}²:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    mask = output / f"{image.stem}.png"
    if png_size(mask) != (size, size):
        raise SystemExit(f"{mask} is {png_size(mask)}, expected {(size, size)}")
    peak_mib = int(peak_file.read_text()) / 1024
    megapixels = size * size / 1e6
    lines = result.stdout.splitlines()
    return {
        "size": size,
        "megapixels": round(megapixels, 3),
        "tiles": plan_tiles(size, size, args.tile_size, args.overlap, 0, 2**args.depth).count,
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_mib, 1),
        "mib_per_megapixel": round(peak_mib / megapixels, 2),
        "input_and_mask_mib": round(2 * size * size / 2**20, 1),
        "fast_path": lines[0].strip() if lines else "",
        "end_line": next((line.strip() for line in lines if line.startswith("predicted ")), ""),
        "objects_line": next((line.strip() for line in lines if " object(s)" in line), ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192], help="square image sides")
    parser.add_argument("--base-channels", type=int, default=64, help="network width (64: the classic U-Net)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--backend", default="auto", help="auto, torch or openvino")
    parser.add_argument(
        "--save", nargs="+", default=["mask"], help="outputs to write (mask, probability, overlay, ...)"
    )
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint instead of an untrained classic net")
    parser.add_argument("--image", choices=["texture", "nuclei"], default="texture", help="what the images show")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="keep the images and masks here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="unetseg-bench-") as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        spec = ModelSpec("bilinear", 1, 1, args.base_channels, args.depth)
        checkpoint = workdir / f"untrained_{args.base_channels}.pt"
        normalizer = PercentileNormalizer(0.5, 99.5)
        if args.checkpoint is not None:
            checkpoint = args.checkpoint.resolve()
            spec = load_checkpoint(checkpoint).model
            args.base_channels, args.depth = spec.base_channels, spec.depth
        else:
            untrained = Checkpoint(build_network(spec).state_dict(), spec, normalizer, ["bg", "fg"], 0.5, 0, {})
            save_checkpoint(untrained, checkpoint)
        print(
            f"unetseg predict, {args.base_channels}-wide U-Net (depth {args.depth}), {args.image} images, "
            f"tiles {args.tile_size} overlap {args.overlap} batch {args.batch_size}, backend {args.backend}, "
            f"save={args.save}; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        )
        rows: list[dict[str, object]] = []
        for size in args.sizes:
            row = run_size(size, checkpoint, workdir, args)
            if rows:
                previous = rows[-1]
                added = float(row["megapixels"]) - float(previous["megapixels"])  # type: ignore[arg-type]
                grown = float(row["peak_rss_mib"]) - float(previous["peak_rss_mib"])  # type: ignore[arg-type]
                row["growth_mib_per_added_megapixel"] = round(grown / added, 2) if added > 0 else None
            rows.append(row)
            growth = row.get("growth_mib_per_added_megapixel")
            print(
                f"  {size:>5}²  {row['megapixels']:>6.2f} MP  {row['tiles']:>5} tiles  {row['seconds']:>7.1f} s  "
                f"peak {row['peak_rss_mib']:>7.1f} MiB  {row['mib_per_megapixel']:>7.2f} MiB/MP"
                + (f"  +{growth} MiB per added MP" if growth is not None else ""),
                flush=True,
            )
        if rows:
            print(f"  fast path: {rows[0]['fast_path']}\n  last end line: {rows[-1]['end_line']}")
            if rows[-1]["objects_line"]:
                print(f"  last objects line: {rows[-1]['objects_line']}")
        results = {
            "base_channels": args.base_channels,
            "depth": args.depth,
            "tile_size": args.tile_size,
            "overlap": args.overlap,
            "batch_size": args.batch_size,
            "backend": args.backend,
            "save": args.save,
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "image": args.image,
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "sizes": rows,
        }
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
