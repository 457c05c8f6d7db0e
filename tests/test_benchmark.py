"""The throughput benchmark runs end to end (at a tiny size; the real figures come from `make bench`)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_throughput_benchmark_reports_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "throughput.py"),
            "--size",
            "64",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["matmul_gflops"]) == {"fp32", "bf16"}
    for task in ("train", "predict"):
        row = report[task]
        assert row["gflop_per_image"] > 0 and row["speedup"] > 0
        for path in ("plain", "fast"):
            assert row[path]["images_per_s"] > 0 and row[path]["peak_memory_mib"] > 0
    assert "speedup" in result.stdout
