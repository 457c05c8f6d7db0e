"""The disk cache for data sets larger than memory (unetseg.data.cache): its keys, fills that are killed or run
at once, patches equal to the in-memory path's, data.in_memory's choice, and training and resuming through it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import TINY, assert_one_line_error, run_cli, write_dataset
from unetseg.config import DataConfig
from unetseg.data import dataset as dataset_module
from unetseg.data.cache import DataCache, entry_key
from unetseg.data.dataset import SegmentationDataset, SetSize, choose_storage, load_splits
from unetseg.data.labels import LabelRule
from unetseg.data.normalize import PercentileNormalizer
from unetseg.model.checkpoint import load_checkpoint
from unetseg.runtime.errors import UserError
from unetseg.training.border_weights import border_weight_map
from unetseg.training.fingerprint import data_digest

NORMALIZER = PercentileNormalizer(0.5, 99.5)
SETTINGS = "channels=1|rule|normalizer"


def folder_config(root: Path, cache: Path, in_memory: str, **changes: object) -> DataConfig:
    """data=folder's defaults (conf/data/*.yaml), pointed at ``root`` and ``cache``."""
    from omegaconf import OmegaConf

    from unetseg.config import register_schemas
    from unetseg.runtime.paths import config_dir

    register_schemas()
    values = OmegaConf.merge(
        OmegaConf.structured(DataConfig),
        OmegaConf.load(Path(config_dir()) / "data" / "synthetic.yaml"),
        {"source": "folder", "root": str(root), "class_names": ["background", "foreground"]},
        {"in_memory": in_memory, "cache_dir": str(cache), **changes},
    )
    return OmegaConf.to_object(values)  # type: ignore[return-value]


def entries_in(cache: Path) -> dict[str, float]:
    """Every complete entry folder under ``cache``, with its meta.json's modification time."""
    return {meta.parent.name: meta.stat().st_mtime_ns for meta in cache.glob("*/*/meta.json")}


# ---- keys ------------------------------------------------------------------------------------------------


def test_a_key_changes_when_a_file_changes_and_not_otherwise(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=2, size=32)
    image, label = root / "image" / "0.png", root / "label" / "0.png"
    key = entry_key(image, label, SETTINGS)
    assert entry_key(image, label, SETTINGS) == key  # the same files: the same entry
    assert entry_key(tmp_path / "d" / "image" / ".." / "image" / "0.png", label, SETTINGS) == key  # path resolved
    assert entry_key(image, label, SETTINGS + "|other") != key  # other settings (channels, label rule, percentiles)
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 1_000_000))  # touched
    touched = entry_key(image, label, SETTINGS)
    assert touched != key
    pixels = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(image), 255 - pixels)  # rewritten: new contents and modification time
    assert entry_key(image, label, SETTINGS) not in (key, touched)


def test_a_second_load_decodes_nothing_and_a_changed_file_only_itself(tmp_path: Path) -> None:
    root, cache = write_dataset(tmp_path / "d", count=5, size=32), tmp_path / "cache"
    data = folder_config(root, cache, "false")
    train, val = load_splits(data, 1, LabelRule(1), NORMALIZER)
    assert train.entries is not None and val.entries is not None and len(train) + len(val) == 5
    first = entries_in(cache)
    assert len(first) == 5
    load_splits(data, 1, LabelRule(1), NORMALIZER)
    assert entries_in(cache) == first  # nothing written again
    cv2.imwrite(str(root / "label" / "3.png"), np.zeros((32, 32), np.uint8))
    load_splits(data, 1, LabelRule(1), NORMALIZER)
    after = entries_in(cache)
    assert len(after) == 6 and {k: v for k, v in after.items() if k in first} == first  # one new entry


# ---- what the cache holds, compared with the in-memory path ---------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
def test_patches_from_the_cache_equal_patches_from_memory(tmp_path: Path, bits: int) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=48)
    if bits == 16:  # 16-bit images using a few hundred grey levels, as microscopes write them
        for path in (root / "image").iterdir():
            pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.uint16) * 3 + 1000
            cv2.imwrite(str(path), pixels)
    small = np.full((20, 30), 40, np.uint8)  # smaller than the patch: mirror-padded first
    cv2.imwrite(str(root / "image" / "1b.png"), small)  # in the training part (the last image is held out)
    cv2.imwrite(str(root / "label" / "1b.png"), np.pad(np.full((20, 20), 255, np.uint8), ((0, 0), (0, 10))))
    rule = LabelRule(1)
    every = {name: 0.5 for name in ("elastic", "brightness", "contrast", "gamma", "noise", "blur")}
    augment = folder_config(root, tmp_path, "true", augment=every).augment
    memory_train, memory_val = load_splits(folder_config(root, tmp_path / "c", "true"), 1, rule, NORMALIZER)
    cached_train, cached_val = load_splits(folder_config(root, tmp_path / "c", "false"), 1, rule, NORMALIZER)
    assert memory_train.entries is None and cached_train.entries is not None

    def weights(label: np.ndarray) -> np.ndarray:
        return border_weight_map(label, 1, 10.0, 5.0, True)

    memory_train.with_weights(weights, "w", DataCache(tmp_path / "c"))
    cached_train.with_weights(weights, "w", DataCache(tmp_path / "c"))
    assert "1b" in cached_train.names
    memory = SegmentationDataset(memory_train, seed=3, augment=augment, patch_size=32, samples_per_epoch=12)
    cached = SegmentationDataset(cached_train, seed=3, augment=augment, patch_size=32, samples_per_epoch=12)
    for epoch in (1, 2):
        memory.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(12):
            for held, read in zip(memory[index], cached[index], strict=True):
                assert held.dtype == read.dtype and torch.equal(held, read), (epoch, index)
    # validation reads whole images, one at a time: the same arrays as in memory
    for index in range(len(memory_val)):
        assert np.array_equal(memory_val.images[index], cached_val.images[index])
        assert np.array_equal(memory_val.labels[index], cached_val.labels[index])
    assert memory_val.names == cached_val.names
    # and the run's fingerprint does not depend on where the data is held
    assert data_digest(memory_train, memory_val) == data_digest(cached_train, cached_val)


def test_instance_maps_are_cached_for_validation(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    for index in range(3):
        instances = np.zeros((32, 32), np.uint16)
        instances[4:12, 4:12], instances[12:20, 4:12] = 1 + index, 7  # two touching objects
        cv2.imwrite(str(root / "image" / f"{index}.png"), (instances > 0).astype(np.uint8) * 200)
        cv2.imwrite(str(root / "label" / f"{index}.png"), instances)
    rule = LabelRule(3, target="boundary")
    held = load_splits(folder_config(root, tmp_path / "c", "true", target="boundary"), 1, rule, NORMALIZER)
    cached = load_splits(folder_config(root, tmp_path / "c", "false", target="boundary"), 1, rule, NORMALIZER)
    for memory_part, cached_part in zip(held, cached, strict=True):
        for index in range(len(memory_part)):
            assert np.array_equal(memory_part.instances_of(index), cached_part.instances_of(index))


# ---- faults: a killed fill, a damaged entry, two fills at once -------------------------------------------

KILLED_FILL = """
import os, signal, sys
from pathlib import Path
import numpy as np
from unetseg.data import cache as cache_module
from unetseg.data.decoding import decoded
from unetseg.data.normalize import PercentileNormalizer

saved = cache_module._save
def save_then_die(path, array):
    saved(path, array)
    if path.name == "label.npy":  # the image and the label written, the rest not: killed mid-entry
        os.kill(os.getpid(), signal.SIGKILL)
cache_module._save = save_then_die
raw = np.arange(64, dtype=np.uint8).reshape(1, 8, 8)
pair = decoded("0", raw, PercentileNormalizer(0.5, 99.5), (raw[0] > 20).astype(np.uint8), None)
cache_module.DataCache(Path(sys.argv[1])).fill(sys.argv[2], lambda: pair)
"""


def test_a_killed_fill_leaves_no_entry_a_later_run_trusts(tmp_path: Path) -> None:
    cache, key = DataCache(tmp_path / "cache"), "ab" + "0" * 38
    killed = subprocess.run([sys.executable, "-c", KILLED_FILL, str(cache.root), key], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    leftovers = list(cache.folder_of(key).parent.glob(f".{key}.*.tmp"))
    assert leftovers and (leftovers[0] / "label.npy").is_file()  # killed mid-entry, as meant
    assert cache.open(key) is None  # not at the entry's name: never read
    raw = np.arange(64, dtype=np.uint8).reshape(1, 8, 8)
    from unetseg.data.decoding import decoded

    pair = decoded("0", raw, NORMALIZER, (raw[0] > 20).astype(np.uint8), None)
    entry = cache.fill(key, lambda: pair)
    assert np.array_equal(entry.raw_image(), raw) and not any(cache.folder_of(key).parent.glob("*.tmp"))
    # an entry damaged after it was written (a file cut short by a crash or a full disk) is refilled, not read
    image = entry.folder / "image.npy"
    image.write_bytes(image.read_bytes()[:100])
    assert cache.open(key) is None
    assert np.array_equal(cache.fill(key, lambda: pair).raw_image(), raw)


@pytest.mark.slow
def test_two_fills_of_one_cache_at_once_give_one_valid_cache(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=24, size=256)
    env = {**os.environ, "UNETSEG_CACHE_DIR": str(tmp_path / "shared"), "COLUMNS": "200"}
    command = [sys.executable, "-m", "unetseg", "cache", f"data.root={root}", "trainer.loss=weighted_bce"]
    fills = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [process.communicate(timeout=300) for process in fills]
    assert [process.returncode for process in fills] == [0, 0], results
    cache = DataCache(tmp_path / "shared" / "data")
    metas = list(cache.root.glob("*/*/meta.json"))
    assert len(metas) == 24 and not list(cache.root.glob("*/.*.tmp"))
    assert all(cache.open(meta.parent.name) is not None for meta in metas)
    decoded_now = [int(re.search(r"(\d+) decoded now", " ".join(out.split()))[1]) for out, _ in results]  # type: ignore[index]
    assert sum(decoded_now) == 24, results  # each file decoded once, by one of the two
    weights = list(cache.root.glob("*/*/weights-*.npy"))
    assert len(weights) == 19  # the training part's 19 of 24 (the last 5 are held out)


# ---- data.in_memory ------------------------------------------------------------------------------------


def test_auto_keeps_small_sets_in_memory_and_reads_large_ones_from_the_cache(tmp_path: Path) -> None:
    data = folder_config(tmp_path, tmp_path / "c", "auto")
    size = SetSize(images=400, pixels=400 * 2048**2, decoded=400 * 2048**2 * 5)  # 8.4 GB decoded
    small = choose_storage(data, SetSize(25, 25 * 512**2, 25 * 512**2 * 5), "d", available=8_000_000_000)
    assert small.in_memory and "32.8 MB decoded, within 50% of the 8.0 GB of memory free" in small.reason
    large = choose_storage(data, size, "d", available=8_000_000_000)
    assert not large.in_memory and "8.4 GB decoded would be more than 50% of the 8.0 GB" in large.reason
    assert not choose_storage(folder_config(tmp_path, tmp_path, "false"), size, "d", 10**15).in_memory
    with pytest.raises(UserError, match="more than the 8.0 GB of memory available: .* data.in_memory=auto"):
        choose_storage(folder_config(tmp_path, tmp_path, "true"), size, "d", available=8_000_000_000)


def test_the_start_up_line_says_where_the_data_is_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=32)
    monkeypatch.setattr(dataset_module, "available_memory", lambda: 30_000)  # 4 × 1,024 px × 5 B = 20.5 kB
    train, _ = load_splits(folder_config(root, tmp_path / "c", "auto"), 1, LabelRule(1), NORMALIZER)
    assert train.entries is not None
    assert train.storage == (
        f"read from the disk cache {tmp_path / 'c'} (20.5 kB decoded would be more than 50% of the 30.0 kB of "
        "memory free; data.in_memory=auto)"
    )


@pytest.mark.slow  # three CLI runs
@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("data.in_memory=maybe", "data.in_memory=maybe: use auto"),
        ("data.memory_share=0", "data.memory_share=0.0: the share of free memory"),
        ("data.memory_share=1.5", "data.memory_share=1.5"),
    ],
)
def test_bad_storage_settings_are_one_line(tmp_path: Path, override: str, fragment: str) -> None:
    assert_one_line_error(run_cli("train", override, cwd=tmp_path), fragment)


# ---- end to end ----------------------------------------------------------------------------------------

RECIPE = [
    *TINY,
    "data=folder",
    "trainer.precision=fp32",
    "optim=adam",
    "optim.lr=0.003",
    "data.patch_size=32",
    "data.samples_per_epoch=8",
    "data.augment.elastic=0.5",
    "data.augment.noise=0.5",
    "trainer.loss=weighted_bce_dice",
]


def train(cwd: Path, root: Path, run: str, *extra: str) -> Path:
    result = run_cli(
        "train", *RECIPE, f"data.root={root}", f"hydra.run.dir={run}", *extra, cwd=cwd, env={"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr
    return cwd / run


def epochs(run: Path) -> list[dict]:
    return [json.loads(line) | {"epoch_time_s": 0} for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_from_the_cache_is_the_same_run_and_resumes_exactly(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=6, size=48)
    in_memory = train(tmp_path, root, "memory", "trainer.epochs=2", "data.in_memory=true")
    train(tmp_path, root, "cached", "trainer.epochs=1", "data.in_memory=false")
    resumed = train(
        tmp_path,
        root,
        "cached",
        "trainer.epochs=2",
        "data.in_memory=false",
        f"trainer.resume={tmp_path / 'cached'}",
        "trainer.workers=1",
    )
    assert epochs(resumed) == epochs(in_memory)  # every score of every epoch
    final, expected = (
        load_checkpoint(resumed / "checkpoints" / "last.pt"),
        load_checkpoint(in_memory / "checkpoints" / "last.pt"),
    )
    for name, tensor in expected.state_dict.items():  # bit for bit
        assert torch.equal(final.state_dict[name], tensor), name


@pytest.mark.slow
def test_the_cache_command_fills_what_training_reads(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=5, size=48)
    env = {"UNETSEG_CACHE_DIR": str(tmp_path / "c")}
    filled = run_cli("cache", f"data.root={root}", cwd=tmp_path, env=env)
    assert filled.returncode == 0, filled.stderr
    said = " ".join(filled.stdout.split())  # as one line, however the console wrapped it
    assert "cached 5 image(s)" in said and "5 decoded now, 0 already cached" in said
    assert f"holds 5 entries, 25.2 kB (clear it with: rm -rf {tmp_path / 'c' / 'data'})" in said
    before = entries_in(tmp_path / "c" / "data")
    assert len(before) == 5
    trained = run_cli("train", *TINY, "data=folder", f"data.root={root}", "data.in_memory=false", cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr
    assert "read from the disk cache" in " ".join(trained.stdout.split()) and "caching" not in trained.stdout
    assert entries_in(tmp_path / "c" / "data") == before  # training decoded nothing
    again = run_cli("cache", f"data.root={root}", cwd=tmp_path, env=env)
    assert "0 decoded now, 5 already cached" in " ".join(again.stdout.split())
    assert_one_line_error(run_cli("cache", cwd=tmp_path), "data.root is not set")


@pytest.mark.slow
def test_ctrl_c_while_caching_stops_after_the_entry_at_hand_and_keeps_the_rest(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=40, size=128)
    env = {**os.environ, "UNETSEG_CACHE_DIR": str(tmp_path / "c"), "COLUMNS": "200"}
    command = [sys.executable, "-m", "unetseg", "cache", f"data.root={root}"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    while not entries_in(tmp_path / "c" / "data"):
        assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGSTOP)  # frozen mid-fill: the signal lands between two entries or inside one
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGCONT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert (
        "unetseg cache: stopped by Ctrl-C; caching stopped after" in lines[0]
        and "next run starts from them" in lines[0]
    )
    kept = entries_in(tmp_path / "c" / "data")
    assert 1 <= len(kept) < 40 and not list((tmp_path / "c").glob("data/*/.*.tmp"))
    again = run_cli("cache", f"data.root={root}", cwd=tmp_path, env={"UNETSEG_CACHE_DIR": str(tmp_path / "c")})
    assert f"{40 - len(kept)} decoded now, {len(kept)} already cached" in " ".join(again.stdout.split())
