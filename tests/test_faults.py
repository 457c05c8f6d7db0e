"""Faults injected into real CLI runs (subprocesses): two commands writing into one folder, SIGINT and SIGTERM
mid-epoch and the resume that follows, SIGKILL during a checkpoint write, a full disk, a read-only folder, a
training loss that stops being a number. Nothing is lost and every stop is one line."""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import torch

from conftest import assert_one_line_error, run_cli, write_dataset
from unetseg.io.claims import LOCK_NAME
from unetseg.model.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # end-to-end: the real CLI in subprocesses

# A tiny network (3.5k parameters) on 32² images: an epoch of 24 steps takes about a second.
TRAIN = [
    "data=isbi",
    "model.base_channels=4",
    "model.depth=2",
    "trainer.batch_size=1",
    "data.samples_per_epoch=24",
    "trainer.seed=5",
]


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "unetseg", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 120, every: float = 0.02) -> None:  # noqa: ANN001
    """Poll ``condition()`` until it holds; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the command ended (rc {process.returncode}) before the condition held: {err[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("timed out waiting")
        time.sleep(every)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    write_dataset(root / "d", count=4, size=32)
    return root


@pytest.fixture(scope="module")
def uninterrupted(workdir: Path) -> Path:
    """3 epochs without a stop: the weights every interrupted-and-resumed run must end with."""
    result = run_cli("train", *TRAIN, "data.root=d", "trainer.epochs=3", "hydra.run.dir=whole", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir / "whole" / "checkpoints" / "last.pt"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_epoch_then_resume_gives_the_same_weights(
    workdir: Path, uninterrupted: Path, signum: signal.Signals
) -> None:
    run = workdir / f"stopped-{signum.name}"
    process = start_cli("train", *TRAIN, "data.root=d", "trainer.epochs=3", f"hydra.run.dir={run.name}", cwd=workdir)
    wait_for(lambda: (run / "checkpoints" / "last.pt").is_file(), process)  # epoch 1 has ended
    process.send_signal(signal.SIGSTOP)  # frozen in epoch 2: the signal lands between two of its steps
    process.send_signal(signum)
    process.send_signal(signal.SIGCONT)
    stopped = finish(process)
    assert stopped.returncode == 128 + signum, stopped.stderr
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("unetseg train:")]
    assert len(lines) == 1 and "Traceback" not in stopped.stderr, stopped.stderr
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert f"stopped by {name}" in lines[0] and "epoch 2, step" in lines[0], lines[0]
    progress = load_checkpoint(run / "checkpoints" / "last.pt").training_state["epoch_progress"]  # type: ignore[index]
    assert 1 <= progress["steps"] <= 24

    command = shlex.split(lines[0].split("go on with: ", 1)[1])
    assert command[:2] == ["unetseg", "train"] and f"hydra.run.dir={run.name}" in command
    resumed = run_cli(*command[1:], cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert f"epoch 2 goes on after step {progress['steps']}" in resumed.stdout
    assert same_weights(run / "checkpoints" / "last.pt", uninterrupted)
    assert digest(run / "metrics.jsonl") != "" and len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_and_no_orphan(workdir: Path) -> None:
    run = workdir / "killed"
    checkpoints = run / "checkpoints"
    # A wider network, so that writing last.pt (with its optimiser state, fsync'ed) takes long enough to hit.
    wide = [*TRAIN, "model.base_channels=48", "model.depth=3", "data.samples_per_epoch=2", "trainer.epochs=60"]
    process = start_cli("train", *wide, "data.root=d", f"hydra.run.dir={run.name}", cwd=workdir)
    wait_for(lambda: (checkpoints / "last.pt").is_file(), process)

    def writing() -> bool:
        return any(name.endswith(".tmp") for name in os.listdir(checkpoints))

    wait_for(writing, process, every=0.0005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    orphans = [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]
    assert orphans, "the kill was meant to land mid-write"
    kept = load_checkpoint(checkpoints / "last.pt")  # the previous last.pt is whole
    assert kept.epoch >= 1

    resumed = run_cli(
        "train",
        *wide[:-1],
        f"trainer.epochs={kept.epoch + 1}",
        "data.root=d",
        f"hydra.run.dir={run.name}",
        f"trainer.resume={checkpoints / 'last.pt'}",
        cwd=workdir,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert not [p for p in run.rglob("*.tmp")]  # the next start in that folder removed the orphan
    assert load_checkpoint(checkpoints / "last.pt").epoch == kept.epoch + 1


def test_two_trainings_into_one_run_folder(workdir: Path) -> None:
    first = start_cli("train", *TRAIN, "data.root=d", "trainer.epochs=2", "hydra.run.dir=shared", cwd=workdir)
    wait_for(lambda: (workdir / "shared" / LOCK_NAME).is_file(), first)
    first.send_signal(signal.SIGSTOP)  # certainly still running while the second one starts
    try:
        second = run_cli("train", *TRAIN, "data.root=d", "trainer.epochs=2", "hydra.run.dir=shared", cwd=workdir)
    finally:
        first.send_signal(signal.SIGCONT)
    assert_one_line_error(second, "is in use by another unetseg train (process", str(first.pid))
    assert finish(first).returncode == 0
    run = workdir / "shared"
    kept = {path: digest(path) for path in run.rglob("*") if path.is_file()}

    again = run_cli("train", *TRAIN, "data.root=d", "trainer.epochs=2", "hydra.run.dir=shared", cwd=workdir)
    assert_one_line_error(again, "already holds a training run", "trainer.resume=")
    assert {path: digest(path) for path in run.rglob("*") if path.is_file()} == kept  # not a byte changed


@pytest.fixture(scope="module")
def checkpoint(workdir: Path, uninterrupted: Path) -> Path:
    return uninterrupted


def test_two_predicts_into_one_folder(workdir: Path, checkpoint: Path) -> None:
    inputs = write_dataset(workdir / "many", count=12, size=64) / "image"
    first = start_cli("predict", f"input={inputs}", f"checkpoint={checkpoint}", "output=masks", cwd=workdir)
    wait_for(lambda: (workdir / "masks" / LOCK_NAME).is_file(), first)
    first.send_signal(signal.SIGSTOP)
    try:
        second = run_cli("predict", f"input={inputs}", f"checkpoint={checkpoint}", "output=masks", cwd=workdir)
    finally:
        first.send_signal(signal.SIGCONT)
    assert_one_line_error(second, "masks is in use by another unetseg predict (process", str(first.pid))
    assert finish(first).returncode == 0
    masks = sorted((workdir / "masks").iterdir())
    assert [p.name for p in masks] == sorted(f"{i}.png" for i in range(12))  # no lock file, no temporary left
    assert all(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape == (64, 64) for p in masks)


def test_ctrl_c_in_predict_stops_after_a_whole_file(workdir: Path, checkpoint: Path) -> None:
    inputs = write_dataset(workdir / "more", count=40, size=64) / "image"
    process = start_cli("predict", f"input={inputs}", f"checkpoint={checkpoint}", "output=partial", cwd=workdir)
    wait_for(lambda: any(p.suffix == ".png" for p in (workdir / "partial").glob("*.png")), process, every=0.005)
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGCONT)
    stopped = finish(process)
    assert stopped.returncode == 130, stopped.stderr
    line = stopped.stderr.strip().splitlines()[-1]
    assert "stopped by Ctrl-C" in line and "of 40 file(s) done" in line and "Traceback" not in stopped.stderr
    done = int(line.split("; ")[1].split(" of ")[0])
    written = sorted((workdir / "partial").iterdir())
    assert len(written) == done < 40  # exactly the files it says, each whole
    assert all(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape == (64, 64) for p in written)


def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mount`` for the test (needs the right to mount: root, as in CI's container)."""
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {made.stderr.decode().strip()}; the test needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path / "small", "size=4m")


def test_a_full_disk_during_training_is_one_line_and_leaves_a_resumable_last_pt(
    workdir: Path, small_disk: Path
) -> None:
    run = small_disk / "run"
    args = ["train", *TRAIN, f"data.root={workdir / 'd'}", "trainer.epochs=4", f"hydra.run.dir={run}"]
    process = start_cli(*args, cwd=workdir)
    wait_for(lambda: (run / "checkpoints" / "last.pt").is_file(), process)
    process.send_signal(signal.SIGSTOP)
    with (small_disk / "filler").open("wb") as filler:  # fill the disk to the last byte
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass
    process.send_signal(signal.SIGCONT)
    full = finish(process)
    assert_one_line_error(full, "no space left on the device", "go on with: unetseg train")
    assert full.returncode == 1
    kept = load_checkpoint(run / "checkpoints" / "last.pt")
    assert not [p for p in run.rglob("*.tmp")]

    (small_disk / "filler").unlink()
    command = shlex.split(full.stderr.strip().split("go on with: ", 1)[1])
    resumed = run_cli(*command[1:], cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt").epoch == 4 > kept.epoch


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path / "ro", "size=1m,ro")


def test_a_read_only_output_is_one_line(workdir: Path, checkpoint: Path, read_only: Path) -> None:
    inputs = workdir / "d" / "image"
    result = run_cli("predict", f"input={inputs}", f"checkpoint={checkpoint}", f"output={read_only / 'm'}", cwd=workdir)
    assert_one_line_error(result, str(read_only / "m"), "Read-only file system", "choose another output=")
    result = run_cli(
        "train", *TRAIN, "data.root=d", "trainer.epochs=1", f"hydra.run.dir={read_only / 'r'}", cwd=workdir
    )
    assert_one_line_error(result, "cannot make the run folder", "read-only")


def test_a_loss_that_stops_being_a_number_stops_training(workdir: Path) -> None:
    result = run_cli(
        "train", *TRAIN, "data.root=d", "trainer.epochs=3", "optim.lr=1e30", "hydra.run.dir=diverged", cwd=workdir
    )
    assert_one_line_error(result, "the training loss became", "lower optim.lr")
    for path in (workdir / "diverged" / "checkpoints").glob("*.pt"):  # whatever was kept is a number
        weights = load_checkpoint(path).state_dict
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_resume_refuses_another_experiment_naming_what_differs(workdir: Path, uninterrupted: Path) -> None:
    other_data = write_dataset(workdir / "other", count=4, size=32, seed=9)
    base = [*TRAIN, "trainer.epochs=4", f"trainer.resume={uninterrupted}"]
    optimiser = run_cli("train", *base, "data.root=d", "optim=adam", cwd=workdir)
    assert_one_line_error(optimiser, "it is another experiment (optim.name=rmsprop there, adam here", "apart from")
    data = run_cli("train", *base, f"data.root={other_data}", cwd=workdir)
    assert_one_line_error(data, "it is another experiment (other data")


def test_resume_auto_takes_the_newest_run_of_the_same_experiment(workdir: Path) -> None:
    for name, lr in (("older", "1e-05"), ("newer-other", "0.001")):
        made = run_cli(
            "train",
            *TRAIN,
            "data.root=d",
            "trainer.epochs=1",
            f"optim.lr={lr}",
            f"hydra.run.dir=auto/{name}",
            cwd=workdir,
        )
        assert made.returncode == 0, made.stderr
    auto = [*TRAIN, "data.root=d", "trainer.resume=auto", "runs_root=auto"]
    resumed = run_cli("train", *auto, "trainer.epochs=2", "optim.lr=1e-05", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert f"continuing {workdir / 'auto' / 'older' / 'checkpoints' / 'last.pt'}" in " ".join(resumed.stdout.split())
    none = run_cli("train", *auto, "trainer.epochs=2", "optim.lr=0.5", cwd=workdir)
    assert_one_line_error(none, "trainer.resume=auto: none of the", "is an unfinished run of this experiment")


def test_a_full_disk_in_predict_is_one_line_and_leaves_whole_files(
    workdir: Path, checkpoint: Path, small_disk: Path
) -> None:
    inputs = write_dataset(workdir / "to-fill", count=30, size=96) / "image"
    (small_disk / "filler").write_bytes(b"\0" * (4 * 1024 * 1024 - 40 * 1024))  # room for about ten masks
    result = run_cli(
        "predict", f"input={inputs}", f"checkpoint={checkpoint}", f"output={small_disk / 'masks'}", cwd=workdir
    )
    assert_one_line_error(result, "no space left on the device (", str(small_disk / "masks"), "write elsewhere")
    assert result.returncode == 1
    written = sorted((small_disk / "masks").iterdir())
    assert not [p for p in written if not p.name.endswith(".png")]  # no temporary, no lock file left
    assert all(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape == (96, 96) for p in written)
