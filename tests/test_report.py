"""Seeing training, end to end through the CLI: curves.png, TensorBoard event files, an MLflow store,
report.html (checked in a real headless Chromium), `unetseg report` on runs old and broken."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, TINY, assert_one_line_error, run_cli, write_dataset
from unetseg.reporting.sweeps import never_predicted
from unetseg.tracking.curves import CURVES_SIZE

pytestmark = pytest.mark.slow

BEFORE_REPORTS = "41381bbb03cd62d53daaba84bfc456ff34a9ce5a"  # the last commit before curves, loggers and reports
RUN = [*TINY, "trainer.epochs=2", "data=folder", "hydra.run.dir=run"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with run/ (2 epochs, TensorBoard and MLflow on) and the data it trained on (10 images: 8
    training, 2 validation)."""
    root = tmp_path_factory.mktemp("report")
    data = write_dataset(root / "data", count=10)
    result = run_cli(
        "train",
        *RUN,
        f"data.root={data}",
        "trainer.loggers=[tensorboard,mlflow]",
        "trainer.log_every_n_steps=2",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report:" in result.stdout and "warning" not in result.stdout
    return root


def epochs_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_curves_png_is_written_at_the_stated_size(trained: Path) -> None:
    image = cv2.imread(str(trained / "run" / "curves.png"))
    assert image is not None and image.shape[:2] == (CURVES_SIZE[1], CURVES_SIZE[0])
    first_colour = np.all(np.abs(image.astype(int) - (180, 119, 31)) < 30, axis=2)  # matplotlib's blue, BGR
    assert first_colour.sum() > 500  # curves drawn, not only "not recorded" panels


def test_tensorboard_holds_every_scalar_of_every_epoch(trained: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained / "run" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    records = epochs_of(trained / "run")
    keys = [key for key in records[0] if key not in ("epoch", "best")]
    for key in keys:
        logged = events.Scalars(f"epoch/{key}")
        assert [e.step for e in logged] == [1, 2], key
        for event, record in zip(logged, records, strict=True):
            expected = math.nan if record[key] is None else record[key]  # metrics.jsonl writes NaN as null
            assert event.value == pytest.approx(expected, abs=1e-5, nan_ok=True), key
    assert [e.step for e in events.Scalars("step/train_step_loss")] == [2, 4, 6, 8]  # 4 steps per epoch
    assert any(tag.startswith("best/") for tag in events.Tags()["images"])  # validation pictures at a new best


def test_mlflow_store_holds_params_metrics_and_artifacts(trained: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{trained / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("unetseg")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    config = OmegaConf.load(trained / "run" / ".hydra" / "config.yaml")
    assert float(run.data.params["optim.lr"]) == config.optim.lr
    assert run.data.params["model.base_channels"] == "4" and run.data.params["data.source"] == "folder"
    records = epochs_of(trained / "run")
    for key in ("dice", "val_loss", "pixel_error", "lr"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, round(m.value, 6)) for m in history] == [(r["epoch"], r[key]) for r in records], key
    best = [r for r in records if r["best"]][-1]
    assert run.data.metrics["best_epoch"] == best["epoch"]
    assert run.data.metrics["best_dice"] == pytest.approx(best["dice"], abs=1e-6)  # metrics.jsonl: 6 decimals
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best.pt", "report.html", "curves.png"} <= artifacts


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium installed (Debian: apt-get install chromium); .ci/run installs it")


def browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run(
        [chromium(), *flags, *args, page.as_uri()], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_report_in_a_real_browser(trained: Path, tmp_path: Path) -> None:
    """Chromium opens report.html from a file:// path: the figures table holds the run's numbers, the gallery
    one entry per validation image, and the page is not blank."""
    report = trained / "run" / "report.html"
    dom = browse(report, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    records = epochs_of(trained / "run")
    best = [r for r in records if r["best"]][-1]
    row = re.search(rf'<tr class="best" data-epoch="{best["epoch"]}">(.*?)</tr>', dom.stdout, re.S)
    assert row, dom.stdout[:3000]
    cells = dict(re.findall(r'<td data-key="([a-z_]+)">([^<]*)</td>', row.group(1)))
    for key in ("val_loss", "pixel_error", "dice", "dice_background", "dice_foreground", "iou", "rand_error"):
        assert cells[key] == f"{best[key]:.4f}", key
    entries = re.findall(r'<figure class="entry" data-name="([^"]+)">', dom.stdout)
    assert sorted(entries) == ["8", "9"]  # the 2 validation images, once each
    assert "http://" not in dom.stdout and "https://" not in dom.stdout  # nothing to fetch: opens offline
    assert "Dice foreground is 0 at the best epoch" in dom.stdout  # 2 epochs at lr 1e-5 find no foreground

    shot = tmp_path / "report.png"
    result = browse(report, tmp_path, "--window-size=1280,2000", f"--screenshot={shot}")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 25  # text, curves and pictures, not a blank page


def test_report_without_checkpoint_says_why(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run, ignore=shutil.ignore_patterns("tensorboard"))
    (run / "checkpoints" / "best.pt").unlink()
    (run / "report.html").unlink()
    result = run_cli("report", str(run), cwd=trained)
    assert result.returncode == 0, result.stderr
    assert "without the gallery" in result.stdout and "best.pt" in result.stdout
    html = (run / "report.html").read_text()
    assert 'id="no-gallery"' in html and "best.pt is missing" in html and 'id="figures"' in html


def test_report_gallery_keeps_the_worst_images_first(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run, ignore=shutil.ignore_patterns("tensorboard"))

    def entries(images: str) -> list[tuple[str, float]]:
        result = run_cli("report", str(run), "--images", images, cwd=trained)
        assert result.returncode == 0, result.stderr
        html = (run / "report.html").read_text()
        names = re.findall(r'<figure class="entry" data-name="([^"]+)">', html)
        dice = [float(v) for v in re.findall(r"Dice (\d\.\d+)", html)]  # mean Dice: what the gallery is ranked by
        return list(zip(names, dice, strict=False))

    both = entries("2")
    assert len(both) == 2 and both[0][1] <= both[1][1]  # monitor: mean Dice; the lower one first
    assert [name for name, _ in entries("1")] == [both[0][0]]
    assert entries("0") == [] and "switched off" in (run / "report.html").read_text()


def test_report_escapes_what_it_shows(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run, ignore=shutil.ignore_patterns("tensorboard"))
    (run / ".hydra" / "overrides.yaml").write_text("- data.root=<script>alert(1)</script>\n")
    result = run_cli("report", str(run), cwd=trained)
    assert result.returncode == 0, result.stderr
    html = (run / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_report_refuses_folders_that_are_not_runs(trained: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("report", str(tmp_path), cwd=tmp_path), "is not a training run")
    assert_one_line_error(run_cli("report", str(tmp_path / "nowhere"), cwd=tmp_path), "is not a folder")
    assert_one_line_error(run_cli("report", cwd=tmp_path), "folder", "unetseg report --help")
    assert_one_line_error(run_cli("report", str(trained / "run"), "--device", "foo", cwd=tmp_path), "--device=foo")
    if not torch.cuda.is_available():
        no_gpu = run_cli("report", str(trained / "run"), "--device", "cuda", cwd=tmp_path)
        assert_one_line_error(no_gpu, "CUDA is not available")
    assert_one_line_error(run_cli("report", str(trained), cwd=tmp_path), "holds training runs", str(trained / "run"))
    empty = tmp_path / "empty-run"
    shutil.copytree(trained / "run", empty, ignore=shutil.ignore_patterns("tensorboard", "report.html"))
    (empty / "metrics.jsonl").write_text("")
    assert_one_line_error(run_cli("report", str(empty), cwd=tmp_path), "holds no epoch")
    assert not (empty / "report.html").exists()


def test_report_on_a_run_made_before_reports_existed(tmp_path: Path) -> None:
    """A run made by the code of commit 41381bb (no curves.png, no report.html, no data counts) gets a
    report with curves drawn from its metrics.jsonl and a gallery from its best.pt."""
    if shutil.which("git") is None:
        pytest.skip("needs git to take the earlier code from history")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", BEFORE_REPORTS, "src", "conf"], cwd=REPO, capture_output=True
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {BEFORE_REPORTS} is not in this clone's history: {archive.stderr[:200]!r}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp_path / "old-code", filter="data")
    data = write_dataset(tmp_path / "data", count=10)
    old_env = {"PYTHONPATH": str(tmp_path / "old-code" / "src")}
    probe = subprocess.run(
        ["python", "-c", "import unetseg.tracking"], env={**os.environ, **old_env}, capture_output=True, cwd=tmp_path
    )
    assert probe.returncode != 0  # the old code is what trains: it has no tracking/
    old = run_cli("train", *RUN, f"data.root={data}", cwd=tmp_path, env=old_env)
    assert old.returncode == 0, old.stderr[-2000:]
    run = tmp_path / "run"
    assert not (run / "report.html").exists() and not (run / "curves.png").exists()

    result = run_cli("report", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    html = (run / "report.html").read_text()
    assert html.count('<figure class="entry"') == 2 and 'id="curves"' in html
    assert "counts not recorded" in html
    best = [r for r in epochs_of(run) if r["best"]][-1]
    assert f'<td data-key="dice">{best["dice"]:.4f}</td>' in html


def test_a_missing_logger_package_stops_before_training(tmp_path: Path) -> None:
    hide_mlflow = "import sys; sys.modules['mlflow'] = None; from unetseg.cli import main; main(sys.argv[1:])"
    result = subprocess.run(
        [sys.executable, "-c", hide_mlflow, "train", *TINY, "trainer.loggers=[mlflow]"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(result, "trainer.loggers has mlflow", "pip install 'unetseg[mlflow]'")
    assert not (tmp_path / "outputs").exists()


def test_an_unreachable_tracking_server_does_not_stop_training(tmp_path: Path) -> None:
    result = run_cli(
        "train",
        *TINY,
        "trainer.loggers=[mlflow,tensorboard]",
        "trainer.mlflow_tracking_uri=http://127.0.0.1:9",  # nothing listens on the discard port
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("mlflow logging failed") == 1 and "training goes on" in result.stdout
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert list((tmp_path / "run" / "tensorboard").iterdir())  # the other logger went on


def test_a_silent_tracking_server_costs_one_timeout(tmp_path: Path) -> None:
    """A server that accepts connections and never answers: the logger gives up after one 10-s timeout."""
    from unetseg.tracking.loggers import open_loggers

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.extend(server.accept() for _ in range(8)), daemon=True).start()
    uri = f"http://127.0.0.1:{server.getsockname()[1]}"
    started = time.perf_counter()
    loggers = open_loggers(["mlflow"], tmp_path / "run", tmp_path / "outputs", uri, "unetseg", {})
    assert not loggers.active and time.perf_counter() - started < 30
    server.close()


def test_resume_after_a_cut_metrics_line_keeps_one_epoch_per_line(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "cut"
    shutil.copytree(trained / "run", run, ignore=shutil.ignore_patterns("tensorboard"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:30])  # epoch 2 cut short by a crash
    result = run_cli(
        "train",
        *RUN,
        f"data.root={trained / 'data'}",
        "trainer.epochs=3",
        f"trainer.resume={run / 'checkpoints' / 'last.pt'}",
        "hydra.run.dir=resumed",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [record["epoch"] for record in epochs_of(tmp_path / "resumed")] == [1, 3]


def test_ctrl_c_mid_training_is_one_line_and_leaves_a_reportable_run(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "unetseg", "train", *TINY, "trainer.epochs=500", "hydra.run.dir=run"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr
    [line] = stderr.strip().splitlines()
    assert line.startswith("unetseg train: stopped by Ctrl-C; ") and "go on with: unetseg train" in line, line
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    result = run_cli("report", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "not finished" in (tmp_path / "run" / "report.html").read_text()


def test_the_sweep_table_marks_constant_answers_and_the_best_job() -> None:
    from rich.console import Console

    from unetseg.sweep import summary_table

    def row(job: str, override: str, membrane: float, cell: float) -> dict:
        scores = {"dice": (membrane + cell) / 2, "dice_membrane": membrane, "dice_cell": cell}
        return {
            "job": job,
            "override_list": ["data=isbi", override],
            "status": "completed",
            "monitor": "dice_membrane",
            "best_scores": scores,
            "constant": " ".join(never_predicted(scores)),
            "best_epoch": 3,
            "epochs": 4,
            "wall_time_s": 90.0,
        }

    rows = [row("0", "optim.lr=1e-5", 0.0, 0.87), row("1", "optim.lr=1e-3", 0.81, 0.95)]
    console = Console(record=True, width=200)
    console.print(summary_table(rows))
    text = console.export_text()
    assert "⚠ never predicts membrane: a constant answer" in text
    assert "shared by every job: data=isbi" in text and "optim.lr=1e-3" in text
    line_of_job_1 = next(line for line in text.splitlines() if "optim.lr=1e-3" in line)
    assert "best" in line_of_job_1 and "0.8100" in line_of_job_1  # best by the monitored membrane Dice
    assert "data=isbi optim" not in text  # the shared override is not repeated on the rows
