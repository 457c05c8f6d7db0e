"""The pieces that keep files safe, in-process: folder claims, stale temporaries, strict JSON, storage errors,
the sampler a mid-epoch resume skips with, and what makes two trainings the same experiment."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import RandomSampler

from unetseg.io.atomic import atomic_open, write_text_atomic
from unetseg.io.claims import LOCK_NAME, claim_folder, folder_in_use, remove_stale_temporaries
from unetseg.io.strict_json import to_json
from unetseg.runtime.errors import UserError, describe_out_of_memory, describe_storage_error
from unetseg.training.fingerprint import difference
from unetseg.training.loader import SkippingSampler
from unetseg.training.run_folder import refuse_to_train_into


def test_a_claimed_folder_refuses_a_second_claim_naming_the_holder(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    with claim_folder(folder, "predict", "choose another output="):
        assert (folder / LOCK_NAME).is_file()
        assert "unetseg predict (process" in (folder_in_use(folder) or "")
        with pytest.raises(UserError, match=r"masks is in use by another unetseg predict \(process \d+ on .*choose"):
            claim_folder(folder, "predict", "choose another output=")
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
    (tmp_path / "checkpoints").mkdir()
    orphan = tmp_path / "checkpoints" / ".last.pt.k2j4_x9a.tmp"
    orphan.write_bytes(b"half a checkpoint")
    keep = [tmp_path / "notes.tmp", tmp_path / ".hidden.tmp", tmp_path / "checkpoints" / "last.pt"]
    for path in keep:
        path.write_bytes(b"user data")
    with claim_folder(tmp_path, "train", "x") as claim:
        assert claim.stale_removed == 1
    assert not orphan.exists() and all(path.exists() for path in keep)
    assert remove_stale_temporaries(tmp_path) == 0


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


def test_the_skipping_sampler_resumes_the_same_permutation() -> None:
    data = list(range(10))
    whole = SkippingSampler(RandomSampler(data, generator=torch.Generator().manual_seed(7)))
    resumed = SkippingSampler(RandomSampler(data, generator=torch.Generator().manual_seed(7)))
    resumed.skip = 4
    assert list(resumed) == list(whole)[4:]
    assert len(resumed) == 10 and resumed.skip == 0  # the skip is for one epoch only


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
