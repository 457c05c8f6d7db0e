"""Throughput of the plain path against unetseg's fast path, measured in one run.

Training steps and prediction at 512×512 with the classic 64-wide U-Net (13.4 M parameters):
  plain: fp32, contiguous memory, eager, batch 1
  fast:  what `trainer.precision=auto trainer.channels_last=true` picks on this machine (bf16 autocast and
         channels_last on a CPU with AVX512-BF16/AMX), same batch size
The two paths alternate round by round after a warm-up, so drift in machine load hits both. FLOPs come
from torch.utils.flop_counter; the bf16 and fp32 rates of a 2048³ matmul, measured in the same run, put
the convolution throughput in context. Peak memory is measured in a fresh process per path that runs
only that path's step (CUDA allocator peak on a GPU, peak resident set on a CPU).

    python benchmarks/throughput.py [--device auto] [--rounds 3] [--size 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from unetseg.config import LossName, ModelSpec
from unetseg.model import build_network, fold_batchnorm
from unetseg.runtime.device import resolve_device
from unetseg.runtime.precision import FastPath, choose_fast_path
from unetseg.training.losses import compute_loss

CLASSIC = ModelSpec("bilinear", in_channels=1, num_classes=1, base_channels=64, depth=4)


def isolated_peak_memory_mib(task: str, path: str, args: argparse.Namespace) -> float:
    """Peak memory of a fresh process that runs only this path's step (so neither path's allocations, nor
    memory the allocator kept from the other path, count against it): CUDA allocator peak on a GPU,
    the process's peak resident set (ru_maxrss) on a CPU."""
    command = [
        sys.executable,
        __file__,
        "--device",
        args.device,
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--isolated",
        f"{task}:{path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def run_isolated(spec: str, device: torch.device, size: int, batch: int) -> None:
    task, path = spec.split(":")
    fast = (
        choose_fast_path(device, "fp32", channels_last=False)
        if path == "plain"
        else choose_fast_path(device, "auto", channels_last=True)
    )
    make_step = {"train": training_step, "predict": prediction_step}[task]
    step = make_step(fast, 1 if path == "plain" else batch, size, path == "fast")
    for _ in range(2):
        step()
    synchronize(device)
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated(device) / 2**20)
    else:
        print(peak_rss_kib() / 1024)


def peak_rss_kib() -> float:
    """This process's peak resident set. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent across fork and exec, so a small child started by a big parent would report the parent's."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux, bytes on macOS


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Contender:
    name: str
    fast: FastPath
    step: Callable[[], None] = field(repr=False)
    seconds: list[float] = field(default_factory=list)


def training_step(fast: FastPath, batch: int, size: int, optimized: bool) -> Callable[[], None]:
    """One optimiser step (``optimized`` changes nothing here: BatchNorm cannot be folded while training)."""
    model = fast.prepare_model(build_network(CLASSIC)).train()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-5, momentum=0.9, weight_decay=1e-8)
    scaler = torch.amp.GradScaler(fast.device.type, enabled=fast.needs_grad_scaler)
    images = fast.prepare_input(torch.rand(batch, 1, size, size))
    labels = (torch.rand(batch, size, size, device=fast.device) > 0.3).long()

    def step() -> None:
        with fast.autocast():
            logits = model(images)
        loss = compute_loss(LossName.bce, logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def prediction_step(fast: FastPath, batch: int, size: int, optimized: bool) -> Callable[[], None]:
    """Plain: the network as trained. Optimized: what unetseg's Predictor runs (BatchNorm folded)."""
    model = build_network(CLASSIC).eval()
    model = fast.prepare_model(fold_batchnorm(model) if optimized else model)
    images = fast.prepare_input(torch.rand(batch, 1, size, size))

    def step() -> None:
        with torch.inference_mode(), fast.autocast():
            torch.sigmoid(model(images).float())

    return step


def count_flops(make_step: Callable[..., Callable[[], None]], device: torch.device, size: int) -> int:
    """FLOPs of one image through the plain network (folding BatchNorm does not change conv FLOPs)."""
    plain = choose_fast_path(device, "fp32", channels_last=False)
    step = make_step(plain, 1, size, False)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def measure(paths: list[Contender], rounds: int, steps: int, warmup: int) -> None:
    for path in paths:
        for _ in range(warmup):
            path.step()
        synchronize(path.fast.device)
    for _ in range(rounds):
        for path in paths:  # alternate: plain, fast, plain, fast, ...
            started = time.perf_counter()
            for _ in range(steps):
                path.step()
            synchronize(path.fast.device)
            path.seconds.append((time.perf_counter() - started) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per path")
    parser.add_argument("--steps", type=int, default=2, help="steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1, help="batch size of the fast path (plain is always 1)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--isolated", help=argparse.SUPPRESS)  # internal: TASK:PATH, print its peak memory
    args = parser.parse_args()

    device = resolve_device(args.device)
    if args.isolated:
        run_isolated(args.isolated, device, args.size, args.batch)
        return
    plain = choose_fast_path(device, "fp32", channels_last=False)
    fast = choose_fast_path(device, "auto", channels_last=True)
    print(f"device: {device} ({platform.processor() or platform.machine()}), torch {torch.__version__}")
    print(f"plain: {plain.describe()} · eager · batch 1")
    print(f"fast:  {fast.describe()} · eager · batch {args.batch}")

    results: dict[str, object] = {
        "device": str(device),
        "torch": torch.__version__,
        "fast_path": fast.describe(),
        "size": args.size,
        "fast_batch": args.batch,
    }
    rates = {name: matmul_rate(device, dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    results["matmul_gflops"] = {k: round(v / 1e9, 1) for k, v in rates.items()}
    print(f"2048³ matmul: fp32 {rates['fp32'] / 1e9:.0f} GFLOP/s, bf16 {rates['bf16'] / 1e9:.0f} GFLOP/s")

    for task, make_step in (("train", training_step), ("predict", prediction_step)):
        flops_per_image = count_flops(make_step, device, args.size)
        paths = [
            Contender("plain", plain, make_step(plain, 1, args.size, False)),
            Contender("fast", fast, make_step(fast, args.batch, args.size, True)),
        ]
        measure(paths, args.rounds, args.steps, args.warmup)
        row: dict[str, object] = {"gflop_per_image": round(flops_per_image / 1e9, 1)}
        for path, batch in zip(paths, (1, args.batch), strict=True):
            best = min(path.seconds)
            images_per_s = batch / best
            row[path.name] = {
                "images_per_s": round(images_per_s, 3),
                "seconds_per_step": [round(s, 3) for s in path.seconds],
                "gflops": round(images_per_s * flops_per_image / 1e9, 1),
                "peak_memory_mib": round(isolated_peak_memory_mib(task, path.name, args)),
            }
        ratio = row["fast"]["images_per_s"] / row["plain"]["images_per_s"]  # type: ignore[index]
        row["speedup"] = round(ratio, 2)
        row["fast_gflops_vs_bf16_matmul"] = round(row["fast"]["gflops"] * 1e9 / rates["bf16"], 2)  # type: ignore[index]
        results[task] = row
        print(f"\n{task} ({flops_per_image / 1e9:.0f} GFLOP per image, fastest of {args.rounds} rounds):")
        for name in ("plain", "fast"):
            r = row[name]
            print(
                f"  {name:<5} {r['images_per_s']:7.3f} images/s  {r['gflops']:6.0f} GFLOP/s  "  # type: ignore[index]
                f"peak {r['peak_memory_mib']} MiB"
            )  # type: ignore[index]
        print(f"  speedup {ratio:.2f}×; fast path at {row['fast_gflops_vs_bf16_matmul']:.0%} of the bf16 matmul rate")

    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
