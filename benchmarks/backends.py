"""Per-image time of every way unetseg can run the network at predict time, measured in one run.

For the classic 64-wide U-Net (13.4 M parameters) and the 16-wide ISBI preset, on one 512×512 image (batch 1):
  torch fp32      unetseg's torch backend at precision=fp32 (BatchNorm folded, contiguous)
  torch fast      unetseg's torch backend at precision=auto (bf16 autocast and channels_last where fast)
  openvino f32    unetseg's OpenVINO backend, f32 inference precision
  openvino bf16   unetseg's OpenVINO backend, bf16 inference precision (what backend=auto runs here)
  onnxruntime     the `unetseg export format=onnx` graph under ONNX Runtime's CPU provider (fp32)
The contenders alternate round by round after a warm-up, so drift in machine load hits all of them. GFLOP/s
use the network's FLOPs (torch.utils.flop_counter); a 2048³ bf16 matmul measured in the same run gives the
share of this machine's bf16 rate. The max difference is against torch fp32, on the same random-weight net
unless --checkpoints gives trained ones.

    python benchmarks/backends.py [--rounds 3] [--size 512] [--checkpoints CLASSIC PRESET] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import matmul_rate  # noqa: E402

from unetseg.config import ModelSpec  # noqa: E402
from unetseg.data.normalize import PercentileNormalizer  # noqa: E402
from unetseg.inference.backends import OpenVinoNetwork, TorchNetwork, openvino_installed  # noqa: E402
from unetseg.inference.export import INPUT_NAME, export  # noqa: E402
from unetseg.model import build_network  # noqa: E402
from unetseg.model.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from unetseg.runtime.precision import choose_fast_path  # noqa: E402

NETS = {
    "classic 64-wide": ModelSpec("bilinear", 1, 1, 64, 4),
    "preset 16-wide": ModelSpec("bilinear", 1, 1, 16, 4),
}
Run = Callable[[torch.Tensor], torch.Tensor]


def random_checkpoint(spec: ModelSpec) -> Checkpoint:
    torch.manual_seed(0)
    network = build_network(spec).eval()
    return Checkpoint(network.state_dict(), spec, PercentileNormalizer(0.5, 99.5), ["bg", "fg"], 0.5, 1, {})


def contenders(checkpoint: Checkpoint) -> dict[str, Run]:
    cpu = torch.device("cpu")
    fp32 = choose_fast_path(cpu, "fp32", channels_last=False)
    fast = choose_fast_path(cpu, "auto", channels_last=True)
    runs: dict[str, Run] = {"torch fp32": TorchNetwork(checkpoint, fp32), "torch fast": TorchNetwork(checkpoint, fast)}
    if openvino_installed():
        runs["openvino f32"] = OpenVinoNetwork(checkpoint, fp32)
        runs["openvino bf16"] = OpenVinoNetwork(checkpoint, choose_fast_path(cpu, "bf16", channels_last=True))
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(export(checkpoint, "onnx", 18).data, providers=["CPUExecutionProvider"])
        runs["onnxruntime fp32"] = lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
    return runs


def flops_of(spec: ModelSpec, size: int) -> int:
    network = build_network(spec).eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network(torch.rand(1, spec.in_channels, size, size))
    return counter.get_total_flops()


def measure(runs: dict[str, Run], image: torch.Tensor, rounds: int, steps: int, warmup: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        for _ in range(warmup):
            run(image)
    for _ in range(rounds):
        for name, run in runs.items():  # alternate: every contender once per round
            started = time.perf_counter()
            for _ in range(steps):
                run(image)
            seconds[name].append((time.perf_counter() - started) / steps)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="images per contender per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--checkpoints", nargs=2, type=Path, metavar=("CLASSIC", "PRESET"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        import os

        os.environ.setdefault("UNETSEG_CACHE_DIR", cache)  # conversions of random nets: not for the user's cache
        bf16_rate = matmul_rate(torch.device("cpu"), torch.bfloat16)
        machine = platform.processor() or platform.machine()
        print(f"{machine}, {torch.get_num_threads()} threads, torch {torch.__version__}")
        print(f"2048³ bf16 matmul: {bf16_rate / 1e9:.0f} GFLOP/s\n")
        results: dict[str, object] = {"bf16_matmul_gflops": round(bf16_rate / 1e9, 1), "size": args.size, "nets": {}}
        image = torch.rand(1, 1, args.size, args.size)
        for index, (net, spec) in enumerate(NETS.items()):
            checkpoint = load_checkpoint(args.checkpoints[index]) if args.checkpoints else random_checkpoint(spec)
            spec = checkpoint.model
            flops = flops_of(spec, args.size)
            runs = contenders(checkpoint)
            reference = runs["torch fp32"](image).float()
            seconds = measure(runs, image, args.rounds, args.steps, args.warmup)
            rows = {}
            print(f"{net} ({flops / 1e9:.0f} GFLOP per {args.size}² image):")
            print(f"  {'backend':<17} {'s/image':>8} {'GFLOP/s':>8} {'of bf16':>8} {'vs fast':>8} {'max diff':>9}")
            fast = statistics.median(seconds["torch fast"])
            for name, run in runs.items():
                median = statistics.median(seconds[name])
                difference = float((run(image).float() - reference).abs().max())
                rows[name] = {
                    "seconds_per_image": round(median, 4),
                    "rounds": [round(s, 4) for s in seconds[name]],
                    "gflops": round(flops / median / 1e9, 1),
                    "share_of_bf16_matmul": round(flops / median / bf16_rate, 3),
                    "speedup_vs_torch_fast": round(fast / median, 2),
                    "max_difference": float(np.format_float_positional(difference, precision=6)),
                }
                r = rows[name]
                print(
                    f"  {name:<17} {median:8.3f} {r['gflops']:8.0f} {r['share_of_bf16_matmul']:8.0%} "
                    f"{r['speedup_vs_torch_fast']:7.2f}× {difference:9.1e}"
                )
            print()
            results["nets"][net] = {"gflop_per_image": round(flops / 1e9, 1), "backends": rows}  # type: ignore[index]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
