"""`unetseg predict` as a user types it, against a plain loop, as whole processes on the same folder.

  plain loop        a fresh Python process that builds the network, then for each image: read it (OpenCV),
                    scale to [0, 1], run the fp32 network on the whole image, threshold the sigmoid at 0.5,
                    write the mask as PNG
  unetseg predict   `unetseg predict input=DIR checkpoint=CK output=OUT` (the defaults: backend=auto,
                    tile_size=512, batch_size=4, ...)
  --also adds other settings as more contenders, e.g. --also backend=torch --also "backend=torch margin=64"
  (margin=64 with torch is what the default did before: a 512² slice became 4 tiles).
Every contender runs once per round, in turn, so drift in machine load hits all of them; the table gives the
median of the rounds and its ratio to the plain loop. The default input is the 30 ISBI 2012 test slices, the
default checkpoint a classic 64-wide U-Net with random weights (speed does not depend on the weights); the
first round's OpenVINO conversion is kept in a cache of this benchmark's own, as a user's would be.

    python benchmarks/predict_end_to_end.py [--input DIR] [--checkpoint CK] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from whole_process import summarise, timed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ISBI_TEST = REPO.parent / "shared" / "data" / "isbi2012" / "test"

PLAIN_LOOP = """
import sys
from pathlib import Path
import cv2, numpy as np, torch
from unetseg.model.checkpoint import load_checkpoint
checkpoint = load_checkpoint(Path(sys.argv[1]))
network = checkpoint.build_network().eval()
out = Path(sys.argv[3])
with torch.inference_mode():
    for path in sorted(Path(sys.argv[2]).glob("*.png")):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        x = torch.from_numpy(image.astype(np.float32) / 255)[None, None]
        mask = torch.sigmoid(network(x))[0, 0] >= 0.5
        cv2.imwrite(str(out / path.name), mask.numpy().astype(np.uint8) * 255)
"""


def classic_checkpoint(path: Path) -> Path:
    import torch

    from unetseg.config import ModelSpec
    from unetseg.data.normalize import PercentileNormalizer
    from unetseg.model import build_network
    from unetseg.model.checkpoint import Checkpoint, save_checkpoint

    torch.manual_seed(0)
    spec = ModelSpec("bilinear", 1, 1, 64, 4)
    normalizer = PercentileNormalizer(0.5, 99.5)
    save_checkpoint(Checkpoint(build_network(spec).state_dict(), spec, normalizer, ["bg", "fg"], 0.5, 1, {}), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=ISBI_TEST)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--also", action="append", default=[], help="more predict settings to time, e.g. backend=torch")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.input.is_dir():
        sys.exit(f"no images in {args.input}: give --input (the ISBI test slices are expected in {ISBI_TEST})")
    images = len(list(args.input.glob("*.png")))

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        checkpoint = args.checkpoint or classic_checkpoint(work / "classic.pt")
        env = {**os.environ, "UNETSEG_CACHE_DIR": str(work / "cache")}
        unetseg = [sys.executable, "-m", "unetseg", "predict", f"input={args.input}", f"checkpoint={checkpoint}"]
        commands: dict[str, list[str]] = {
            "plain loop": [sys.executable, "-c", PLAIN_LOOP, str(checkpoint), str(args.input)],
            "unetseg predict": unetseg,
            **{f"unetseg predict {extra}": [*unetseg, *extra.split()] for extra in args.also},
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for round_ in range(args.rounds):
            for index, (name, command) in enumerate(commands.items()):
                output = work / f"out-{round_}-{index}"
                output.mkdir()
                if name == "plain loop":
                    seconds[name].append(timed([*command, str(output)], env))
                else:
                    seconds[name].append(timed([*command, f"output={output}"], env))
                print(f"round {round_ + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)

    print(f"\n{images} images from {args.input}, whole processes, median of {args.rounds} rounds:")
    rows = summarise(seconds)
    for name, row in rows.items():
        rate = images / float(row["seconds"])  # type: ignore[arg-type]
        print(f"  {name:<44} {row['seconds']:6.1f} s  {rate:5.2f} images/s  {row['vs_plain']:5.2f}× the plain loop")
    if args.json:
        args.json.write_text(json.dumps({"images": images, "input": str(args.input), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
