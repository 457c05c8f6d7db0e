"""One epoch of the classic recipe with `unetseg train`, against a plain fp32 loop, as whole processes.

  plain loop      a fresh Python process: read the training slices (OpenCV, scaled to [0, 1]), build the
                  classic U-Net, then one epoch of RMSprop (lr 1e-5, momentum 0.9) on BCEWithLogits, batch 1,
                  whole images, fp32: no validation, no checkpoint
  unetseg train   `unetseg train data=isbi data.root=DIR trainer.epochs=1` as a user types it: the same
                  recipe on the fast path, plus validation on the held-out slices, scores, curves and two
                  checkpoints (best.pt, last.pt)
Both take the same 20 training slices (ISBI 2012 slices 0-19; unetseg also validates on 20-24). The two
alternate round by round; the table gives the median of the rounds and the ratio.

    python benchmarks/train_end_to_end.py [--data DIR] [--rounds 3] [--json out.json]
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
ISBI_TRAIN = REPO.parent / "shared" / "data" / "isbi2012" / "train"

PLAIN_LOOP = """
import sys
from pathlib import Path
import cv2, numpy as np, torch
from unetseg.config import ModelSpec
from unetseg.model import build_network
root, count = Path(sys.argv[1]), int(sys.argv[2])
names = sorted((root / "image").glob("*.png"), key=lambda path: int(path.stem))[:count]
def read(path):
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
images = [torch.from_numpy(read(p).astype(np.float32) / 255)[None, None] for p in names]
labels = [torch.from_numpy((read(root / "label" / p.name) > 127).astype(np.float32))[None, None] for p in names]
torch.manual_seed(0)
network = build_network(ModelSpec("bilinear", 1, 1, 64, 4)).train()
optimizer = torch.optim.RMSprop(network.parameters(), lr=1e-5, momentum=0.9, weight_decay=1e-8)
loss_fn = torch.nn.BCEWithLogitsLoss()
for image, label in zip(images, labels):
    loss = loss_fn(network(image), label)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ISBI_TRAIN, help="ISBI train/ (image/ and label/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--also", action="append", default=[], help="more train settings to time")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.data / "image").is_dir():
        sys.exit(f"no ISBI training slices in {args.data}: give --data (expected in {ISBI_TRAIN})")

    train = [sys.executable, "-m", "unetseg", "train", "data=isbi", f"data.root={args.data}", "trainer.epochs=1"]
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "UNETSEG_CACHE_DIR": str(Path(scratch) / "cache")}
        commands = {
            "plain loop": [sys.executable, "-c", PLAIN_LOOP, str(args.data), "20"],
            "unetseg train": train,
            **{f"unetseg train {extra}": [*train, *extra.split()] for extra in args.also},
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for round_ in range(args.rounds):
            for index, (name, command) in enumerate(commands.items()):
                run_dir = Path(scratch) / f"run-{round_}-{index}"
                extra = [] if name == "plain loop" else [f"hydra.run.dir={run_dir}"]
                seconds[name].append(timed([*command, *extra], env))
                print(f"round {round_ + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)

    print(f"\none epoch on 20 slices of {args.data}, whole processes, median of {args.rounds} rounds:")
    rows = summarise(seconds)
    for name, row in rows.items():
        print(f"  {name:<40} {row['seconds']:6.1f} s  {row['vs_plain']:5.2f}× the plain loop")
    if args.json:
        args.json.write_text(json.dumps({"data": str(args.data), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
