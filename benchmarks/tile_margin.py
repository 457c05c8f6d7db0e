"""Does mirrored context around an image (``margin``) buy accuracy at its borders? Measured, to choose the default.

For a trained binary checkpoint (e.g. `make isbi`'s), on ISBI 2012 slices 20-24 (512², held out by the preset):
  - each slice as it is: margin 0 (one 512² pass) against margin M (the slice mirrored by M px each side,
    then tiled: 4 tiles of 512² for M = 64, the old default's cost);
  - a 2048² mosaic per slice: the slice mirrored 4 × 4 (seamless, so only the mosaic's outer edge lacks
    context), tiled at 512² with overlap 0.5: 49 tiles at margin 0, 64 at margin 64.
Scored with the checkpoint's threshold: pixel error and membrane Dice (class 0) on the border band (pixels
within --band px of the image edge) and on the whole image, summed over the slices; plus the tiles and the
time each setting takes.

    python benchmarks/tile_margin.py --checkpoint outputs/isbi/preset/checkpoints/best.pt [--margins 0 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from unetseg.inference.predictor import Predictor, Tiling
from unetseg.model.checkpoint import load_checkpoint
from unetseg.runtime.precision import choose_fast_path

REPO = Path(__file__).resolve().parents[1]
ISBI_TRAIN = REPO.parent / "shared" / "data" / "isbi2012" / "train"


def mosaic(array: np.ndarray, copies: int = 4) -> np.ndarray:
    """(H, W) → (copies·H, copies·W): the array mirrored across every seam (continuous everywhere)."""
    rows = [array if i % 2 == 0 else array[::-1] for i in range(copies)]
    column = np.concatenate(rows, axis=0)
    return np.concatenate([column if j % 2 == 0 else column[:, ::-1] for j in range(copies)], axis=1)


def border_band(shape: tuple[int, int], band: int) -> np.ndarray:
    inside = np.zeros(shape, bool)
    inside[band:-band, band:-band] = True
    return ~inside


def scores(predicted: np.ndarray, truth: np.ndarray, where: np.ndarray) -> dict[str, float]:
    """Pixel error and membrane (class 0) Dice over ``where`` (counts summed by the caller)."""
    p, t = predicted[where] == 0, truth[where] == 0
    return {
        "errors": int((p != t).sum()),
        "pixels": int(where.sum()),
        "inter": int((p & t).sum()),
        "sum": int(p.sum() + t.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=ISBI_TRAIN)
    parser.add_argument("--slices", default="20,21,22,23,24")
    parser.add_argument("--margins", type=int, nargs="+", default=[0, 64])
    parser.add_argument("--band", type=int, default=32)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.data / "image").is_dir():
        sys.exit(f"no ISBI training slices in {args.data}: give --data")
    checkpoint = load_checkpoint(args.checkpoint)
    fast = choose_fast_path(torch.device("cpu"), "auto", channels_last=True)
    slices = [int(s) for s in args.slices.split(",")]
    pairs = [
        (
            cv2.imread(str(args.data / "image" / f"{i}.png"), cv2.IMREAD_GRAYSCALE),
            cv2.imread(str(args.data / "label" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) > 127,
        )
        for i in slices
    ]
    results: dict[str, dict] = {}
    print(f"{args.checkpoint} on slices {args.slices}, threshold {checkpoint.threshold}, border band {args.band} px")
    header = ("set", "margin", "tiles", "seconds", "border px err", "border Dice", "px err", "Dice memb")
    print("{:<14} {:>6} {:>6} {:>8} {:>13} {:>11} {:>8} {:>9}".format(*header))
    for name, make in (("slices 512²", lambda a: a), ("mosaics 2048²", mosaic)):
        for margin in args.margins:
            predictor = Predictor(checkpoint, fast, tiling=Tiling(tile=512, margin=margin), backend=args.backend)
            totals = {"border": {}, "all": {}}
            tiles, started = 0, time.perf_counter()
            for image, label in pairs:
                image, label = make(image), make(label).astype(np.uint8)
                tiles += predictor.tile_count(*image.shape)
                predicted = predictor.segment(image[None]).classes
                for key, where in (
                    ("border", border_band(image.shape, args.band)),
                    ("all", np.ones(image.shape, bool)),
                ):
                    for k, v in scores(predicted, label, where).items():
                        totals[key][k] = totals[key].get(k, 0) + v
            seconds = time.perf_counter() - started
            row = {"tiles": tiles, "seconds": round(seconds, 1)}
            for key, t in totals.items():
                row[f"{key}_pixel_error"] = round(t["errors"] / t["pixels"], 5)
                row[f"{key}_dice_membrane"] = round(2 * t["inter"] / max(t["sum"], 1), 5)
            results[f"{name} margin {margin}"] = row
            print(
                f"{name:<14} {margin:>6} {tiles:>6} {seconds:>8.1f} {row['border_pixel_error']:>13.4f} "
                f"{row['border_dice_membrane']:>11.4f} {row['all_pixel_error']:>8.4f} {row['all_dice_membrane']:>9.4f}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
