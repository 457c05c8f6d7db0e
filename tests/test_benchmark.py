"""The benchmarks run end to end (at tiny sizes; the real figures come from `make bench` and `make bench-memory`)."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # end-to-end: the real CLI in a subprocess (make test-fast skips them)


def run_benchmark(script: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<script>`` with ``args`` and ``--json out``, as `make bench` does."""
    command = [sys.executable, str(REPO / "benchmarks" / script), *args, "--json", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_throughput_benchmark_reports_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_benchmark("throughput.py", out, "--size", "64", "--rounds", "1", "--steps", "1", "--warmup", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["matmul_gflops"]) == {"fp32", "bf16"}
    for task in ("train", "predict"):
        row = report[task]
        assert row["gflop_per_image"] > 0 and row["speedup"] > 0
        for path in ("plain", "fast"):
            assert row[path]["images_per_s"] > 0 and row[path]["peak_memory_mib"] > 0
    assert "speedup" in result.stdout


def test_predict_memory_benchmark_measures_the_real_cli(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    result = run_benchmark(
        "predict_memory.py", out, "--sizes", "64", "160", "--base-channels", "4", "--depth", "2", "--tile-size", "64"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["sizes"]
    assert [row["size"] for row in rows] == [64, 160]
    assert [row["tiles"] for row in rows] == [1, 16]  # 64: one pass; 160: 4 tiles a side, steps of 32 ≤ 64 × 0.5
    for row in rows:
        # the child's own peak: a Python process with torch loaded, far below the 2 GiB budget
        assert 100 < row["peak_rss_mib"] < 2048
        assert row["seconds"] > 0
        assert (
            abs(row["mib_per_megapixel"] - row["peak_rss_mib"] / (row["size"] ** 2 / 1e6))
            < 0.01 * row["mib_per_megapixel"]
        )
        assert "images/s" in row["end_line"] and "megapixels/s" in row["end_line"]
    assert rows[1]["growth_mib_per_added_megapixel"] is not None
    assert "MiB per added MP" in result.stdout


def test_big_data_benchmark_trains_the_big_folder_from_the_cache_in_its_budget(tmp_path: Path) -> None:
    out = tmp_path / "big.json"
    tiny = shlex.split("--images 4 --size 96 --small-images 2 --widths 8 4 --steps 1 1 --rounds 1")
    result = run_benchmark("big_data.py", out, *tiny, "--memory-share", "0.0000001", "--budget-gib", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    runs = {row["run"]: row for row in report["runs"]}
    assert list(runs) == [
        "big-8-first",
        "big-4-second",
        "small-8-memory-1",
        "small-8-cache-1",
        "small-4-memory-1",
        "small-4-cache-1",
    ]
    first, second = runs["big-8-first"], runs["big-4-second"]
    assert first["storage"].startswith("read from the disk cache") and "data.in_memory=auto" in first["storage"]
    assert first["decoded_now"] and not second["decoded_now"]  # the second run reads what the first cached
    assert runs["small-8-memory-1"]["storage"].startswith("in memory") and not runs["small-8-cache-1"]["decoded_now"]
    assert all(0 < row["peak_rss_mib"] < 3 * 1024 and row["steps_per_s"] > 0 for row in runs.values())
    assert set(report["cache_over_memory_steps_per_s"]) == {"8", "4"}
    assert "steps/s, cache ÷ memory" in result.stdout
