"""Do the OpenVINO and torch backends give the same masks and the same scores? Measured on ISBI 2012 slices.

For a trained checkpoint: the share of pixels whose class agrees between backend=torch and backend=openvino
(both at precision=auto, i.e. bf16 on a CPU with AVX512-BF16), per slice and over all, and the scores of
`unetseg evaluate` (run as a user would, once per backend) side by side.

    python benchmarks/backend_agreement.py --checkpoint outputs/isbi/preset/checkpoints/best.pt \
        [--data ../shared/data/isbi2012/train] [--slices 20,21,22,23,24] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import torch

from unetseg.inference.predictor import Predictor, Tiling
from unetseg.model.checkpoint import load_checkpoint
from unetseg.runtime.precision import choose_fast_path

REPO = Path(__file__).resolve().parents[1]
ISBI_TRAIN = REPO.parent / "shared" / "data" / "isbi2012" / "train"
SCORES = ("pixel_error", "dice", "dice_membrane", "dice_cell", "rand_error")


def evaluate(checkpoint: Path, data: Path, backend: str, work: Path) -> dict[str, float]:
    """`unetseg evaluate` on the checkpoint's validation split (slices 20-24 for the ISBI recipes)."""
    output = work / f"evaluate-{backend}"
    command = [
        sys.executable, "-m", "unetseg", "evaluate", f"checkpoint={checkpoint}", f"data.root={data}",
        f"output={output}", f"backend={backend}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    if result.returncode != 0:
        sys.exit(f"evaluate failed:\n{result.stderr}")
    metrics = json.loads((output / "metrics.json").read_text())
    return {key: value for key, value in metrics["mean"].items() if key in SCORES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=ISBI_TRAIN)
    parser.add_argument("--slices", default="20,21,22,23,24")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    fast = choose_fast_path(torch.device("cpu"), "auto", channels_last=True)
    tiling = Tiling(tile=512)  # predict's and evaluate's default
    predictors = {name: Predictor(checkpoint, fast, tiling=tiling, backend=name) for name in ("torch", "openvino")}
    agree, pixels, per_slice = 0, 0, {}
    for index in args.slices.split(","):
        image = cv2.imread(str(args.data / "image" / f"{index}.png"), cv2.IMREAD_UNCHANGED)[None]
        masks = [predictor.predict(image) for predictor in predictors.values()]
        same = int((masks[0] == masks[1]).sum())
        per_slice[index] = round(same / masks[0].size, 5)
        agree, pixels = agree + same, pixels + masks[0].size
    print(f"{args.checkpoint}: masks agree on {agree / pixels:.4%} of the pixels of slices {args.slices}")
    print("  per slice: " + ", ".join(f"{k}: {v:.4%}" for k, v in per_slice.items()))
    with tempfile.TemporaryDirectory() as scratch:
        scores = {backend: evaluate(args.checkpoint, args.data, backend, Path(scratch)) for backend in predictors}
    print(f"  {'unetseg evaluate':<16} {'torch':>8} {'openvino':>9} {'difference':>11}")
    for key in SCORES:
        if key in scores["torch"]:
            a, b = scores["torch"][key], scores["openvino"][key]
            print(f"  {key:<16} {a:8.4f} {b:9.4f} {b - a:+11.4f}")
    if args.json:
        results = {"agreement": agree / pixels, "per_slice": per_slice, "scores": scores}
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
