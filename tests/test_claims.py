"""The pieces that keep files safe, in-process: folder claims, stale temporaries, strict JSON, storage errors,
the sampler a mid-epoch resume skips with, and what makes two trainings the same experiment."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from unetseg.io.atomic import atomic_open, write_text_atomic
from unetseg.io.claims import LOCK_NAME, claim_folder, folder_in_use
from unetseg.io.strict_json import to_json
from unetseg.runtime.errors import UserError, describe_out_of_memory, describe_storage_error
from unetseg.training.fingerprint import difference
from unetseg.training.loader import EpochOrder
from unetseg.training.run_folder import refuse_to_train_into

CLAIM_FROM_ANOTHER_PROCESS = """
import sys
from pathlib import Path
from unetseg.io.claims import claim_folder
from unetseg.runtime.errors import UserError
try:
    claim_folder(Path(sys.argv[1]), "predict", "choose another output=")
except UserError as error:
    print(error)
"""


def test_a_claimed_folder_refuses_a_second_claim_naming_the_holder(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    with claim_folder(folder, "predict", "choose another output="):
        assert (folder / LOCK_NAME).is_file()
        assert f"unetseg predict (process {os.getpid()}" in (folder_in_use(folder) or "")
        other = subprocess.run(
            [sys.executable, "-c", CLAIM_FROM_ANOTHER_PROCESS, str(folder)], capture_output=True, text=True
        )
        assert f"masks is in use by another unetseg predict (process {os.getpid()} on " in other.stdout
        assert "choose another output=" in other.stdout
        with claim_folder(folder, "predict", "x") as again:  # this process holds it already: a no-op claim
            assert again.handle is None
        assert (folder / LOCK_NAME).is_file()  # still held
    assert folder_in_use(folder) is None
    assert not folder.exists()  # made by the claim, left empty: removed with it


def test_a_released_claim_keeps_a_folder_with_outputs_and_leaves_no_lock(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with claim_folder(folder, "predict", "x"):
        (folder / "0.png").write_bytes(b"mask")
    assert sorted(p.name for p in folder.iterdir()) == ["0.png"]
    with claim_folder(folder, "predict", "x"):  # free again
        pass


def test_a_claim_removes_what_a_killed_writer_left_and_nothing_else(tmp_path: Path) -> None:
    gone = _a_finished_process()
    (tmp_path / "checkpoints").mkdir()
    orphan = tmp_path / "checkpoints" / f".last.pt.{gone}.k2j4_x9a.tmp"
    orphan.write_bytes(b"half a checkpoint")
    keep = [
        tmp_path / "notes.tmp",
        tmp_path / ".hidden.tmp",
        tmp_path / "checkpoints" / "last.pt",
        tmp_path / f".best.pt.{os.getpid()}.abcdefgh.tmp",  # a live writer's
    ]
    for path in keep:
        path.write_bytes(b"user data")
    with claim_folder(tmp_path / "other", "predict", "x"):  # another command's folder: not ours to clean
        (tmp_path / "other" / f".0.png.{gone}.abcdefgh.tmp").write_bytes(b"theirs")
        with claim_folder(tmp_path, "train", "x") as claim:
            assert claim.stale_removed == 1
        assert (tmp_path / "other" / f".0.png.{gone}.abcdefgh.tmp").exists()
    assert not orphan.exists() and all(path.exists() for path in keep)


def _a_finished_process() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_an_atomic_write_that_fails_names_the_target_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    with pytest.raises(OSError) as failure, atomic_open(target, durable=True) as handle:
        handle.write(b"{")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert failure.value.filename == str(target) and failure.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    write_text_atomic(target, "{}", durable=True)
    assert target.read_text() == "{}"


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (errno.ENOSPC, "no space left on the device (/x/last.pt): free some space"),
        (errno.EROFS, "read-only (/x/last.pt): write elsewhere"),
        (errno.EACCES, "permission denied (/x/last.pt)"),
    ],
)
def test_storage_errors_are_one_line_with_the_path(code: int, fragment: str) -> None:
    message = describe_storage_error(OSError(code, "x", "/x/last.pt"))
    assert message is not None and fragment in message and "\n" not in message
    assert describe_storage_error(OSError(errno.EINVAL, "x")) is None  # not the user's to fix: a traceback


def test_json_outputs_are_strict() -> None:
    text = to_json({"dice": math.nan, "scores": [1.0, math.inf, -math.inf], "n": 3})
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON")) == {
        "dice": None,
        "scores": [1.0, None, None],
        "n": 3,
    }


def test_an_epoch_order_is_the_shuffling_of_earlier_versions_and_skips_once() -> None:
    shuffled = torch.Generator().manual_seed(7)
    earlier = [int(i) for i in DataLoader(list(range(10)), batch_size=1, shuffle=True, generator=shuffled)]
    order = EpochOrder(10)
    order.seed, order.skip = 7, 4
    assert list(order) == earlier[4:]  # checkpoints of earlier versions resume to the same numbers
    assert list(order) == earlier and len(order) == 10  # the skip is for one epoch only


class Numbers(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        return index


def test_a_resume_mid_epoch_with_persistent_workers_takes_the_remaining_batches() -> None:
    def batches(epochs: list[int], skip_steps: int = 0) -> list[list[list[int]]]:
        generator, order = torch.Generator(), EpochOrder(8)
        loader = DataLoader(
            Numbers(), batch_size=2, sampler=order, num_workers=1, persistent_workers=True, generator=generator
        )
        seen = []
        for epoch in epochs:
            generator.manual_seed(epoch)
            order.seed, order.skip = epoch, (skip_steps * 2 if epoch == epochs[0] else 0)
            seen.append([batch.tolist() for batch in loader])
        return seen

    straight = batches([1, 2])
    assert batches([2], skip_steps=1) == [straight[1][1:]]


def test_a_different_setting_or_data_is_named() -> None:
    stored = {"config": {"optim.name": "rmsprop", "optim.lr": "1e-05"}, "data": "abc"}
    assert difference(stored, stored) is None
    changed = {"config": {"optim.name": "adam", "optim.lr": "1e-05"}, "data": "abc"}
    assert difference(stored, changed) == "optim.name=rmsprop there, adam here"
    assert "other data" in str(difference(stored, {**stored, "data": "xyz"}))


def test_training_into_a_folder_with_a_run_needs_to_resume_that_run(tmp_path: Path) -> None:
    refuse_to_train_into(tmp_path, None)  # empty: fine
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError, match="already holds a training run"):
        refuse_to_train_into(tmp_path, None)
    with pytest.raises(UserError, match="already holds a training run"):
        refuse_to_train_into(tmp_path, str(tmp_path.parent / "other" / "checkpoints" / "last.pt"))
    refuse_to_train_into(tmp_path, str(tmp_path / "checkpoints" / "last.pt"))  # resuming it: fine


def test_running_out_of_memory_is_one_line_with_what_to_lower() -> None:
    torch_says = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"
    )
    for error in (torch_says, MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")):
        message = describe_out_of_memory(error)
        assert message is not None and message.startswith("out of memory") and "data.patch_size" in message
        assert "\n" not in message
    assert describe_out_of_memory(RuntimeError("size mismatch for outc.weight")) is None


def test_an_atomic_write_takes_a_name_as_long_as_the_file_system_allows(tmp_path: Path) -> None:
    target = tmp_path / f"{'c' * 250}.png"  # 254 characters: the temporary's name must not exceed 255
    write_text_atomic(target, "mask")
    assert target.read_text() == "mask" and len(list(tmp_path.iterdir())) == 1
