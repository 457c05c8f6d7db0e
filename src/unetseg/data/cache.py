"""The disk cache that lets training read data sets larger than memory.

Each labelled pair is decoded and checked once (:func:`unetseg.data.decoding.decode_pair`) and kept as ``.npy``
files in an entry folder named by a key: the image in its own dtype (1 byte per pixel for 8-bit data, not the 4 of
a normalised float32), the uint8 class ids, the int32 instance map where the label file is one, and ``meta.json``
(the image's normalisation and digest). Training crops its patches straight from memory-mapped files, so only
the patches it reads are in memory. ``.npy`` rather than zarr: no chunking or compression to undo on every patch
(a crop of an uncompressed row-major array reads its rows and nothing else), no new dependency, and NumPy opens
it memory-mapped.

The key is a hash of each file's resolved path, size and modification time and of every setting that changes
the arrays (channels, label rule, normalisation percentiles), so a changed file is read again and an unchanged one
never is. An entry is written in a temporary folder and renamed into place whole, under a per-entry lock
(``flock``): runs filling one cache at once (sweep jobs, torchrun ranks) decode each file once, and a fill that is
killed leaves only a temporary folder that no run trusts (the next fill of that entry removes it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import operator
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np

from unetseg.data.decoding import DecodedPair
from unetseg.data.normalize import Scaling
from unetseg.runtime.amounts import in_units
from unetseg.runtime.errors import UserError

FORMAT = "unetseg-data-cache-1"  # in every key: a new layout never reads an old one


@dataclass(frozen=True)
class CacheEntry:
    """One cached pair: where its arrays are and what they hold (read from its meta.json)."""

    folder: Path
    name: str
    shape: tuple[int, int, int]  # the image's (C, H, W)
    low: float  # its normalisation (Scaling)
    high: float
    digest: str
    has_instances: bool

    @property
    def scaling(self) -> Scaling:
        return Scaling(self.low, self.high)

    def raw_image(self) -> np.ndarray:
        """(C, H, W) in the file's dtype, memory-mapped: slicing it reads only the slice."""
        return np.load(self.folder / "image.npy", mmap_mode="r")

    def raw_classes(self) -> np.ndarray:
        """uint8 (H, W) class ids, memory-mapped."""
        return np.load(self.folder / "label.npy", mmap_mode="r")

    def image(self) -> np.ndarray:
        """The whole image normalised: float32 (C, H, W), as the in-memory path holds it."""
        return self.scaling(self.raw_image())

    def classes(self) -> np.ndarray:
        return np.array(self.raw_classes())

    def instances(self) -> np.ndarray | None:
        return np.load(self.folder / "instances.npy") if self.has_instances else None

    def weights_path(self, key: str) -> Path:
        return self.folder / f"weights-{key}.npy"

    def raw_weights(self, key: str) -> np.ndarray:
        """float32 (H, W) loss weights of the kind ``key`` names (see :meth:`DataCache.add_weights`), memory-mapped."""
        return np.load(self.weights_path(key), mmap_mode="r")


class CachedView(Sequence[np.ndarray]):
    """A list-like view of one array of each entry, read from disk when indexed (one image at a time)."""

    def __init__(self, entries: Sequence[CacheEntry], read: Callable[[CacheEntry], np.ndarray | None]) -> None:
        self.entries, self.read = list(entries), read

    def __len__(self) -> int:
        return len(self.entries)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> CachedView: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | CachedView:
        if isinstance(index, slice):
            return CachedView(self.entries[index], self.read)
        return self.read(self.entries[index])  # type: ignore[return-value]

    def __add__(self, other: object) -> CachedView:
        if not isinstance(other, CachedView) or other.read != self.read:
            return NotImplemented
        return CachedView(self.entries + other.entries, self.read)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[index] for index in range(len(self)))


# The views' readers: picklable (DataLoader worker processes get the dataset), one per array.
read_image = operator.methodcaller("image")
read_classes = operator.methodcaller("classes")
read_instances = operator.methodcaller("instances")


def weights_reader(key: str) -> Callable[[CacheEntry], np.ndarray]:
    return operator.methodcaller("raw_weights", key)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path``: a second filler of the same entry waits, then finds it filled. The
    kernel drops the lock when its holder dies, however it dies."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def entry_key(image_path: Path, label_path: Path, settings: str) -> str:
    """The entry of a pair: both files' resolved paths, sizes and modification times, and ``settings`` (what
    else changes the arrays: channels, label rule, normalisation)."""
    text = "\n".join([FORMAT, settings, _file_identity(image_path), _file_identity(label_path)])
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def _has_array(path: Path, shape: tuple[int, ...], dtype: str | None = None) -> bool:
    """Whether ``path`` is a whole .npy of this shape (and dtype): a file cut short by a crash is not."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return array.shape == shape and (dtype is None or array.dtype == np.dtype(dtype))


class DataCache:
    """The entries under ``root`` (data.cache_dir, default <unetseg cache>/data)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.decoded = 0  # entries this object decoded and wrote (not those it found)

    def folder_of(self, key: str) -> Path:
        return self.root / key[:2] / key

    def open(self, key: str) -> CacheEntry | None:
        """The entry ``key`` if it is complete and whole; None if it is missing or damaged."""
        folder = self.folder_of(key)
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            shape = tuple(int(side) for side in meta["shape"])
            entry = CacheEntry(
                folder, str(meta["name"]), shape, float(meta["low"]), float(meta["high"]), str(meta["digest"]),
                bool(meta["instances"]),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if meta.get("format") != FORMAT or len(shape) != 3:
            return None
        arrays = [("image.npy", shape, None), ("label.npy", shape[1:], "uint8")]
        if entry.has_instances:
            arrays.append(("instances.npy", shape[1:], "int32"))
        return entry if all(_has_array(folder / name, s, d) for name, s, d in arrays) else None

    def fill(self, key: str, decode: Callable[[], DecodedPair]) -> CacheEntry:
        """The entry ``key``, decoded with ``decode`` and written first if it is not cached yet."""
        entry = self.open(key)
        if entry is not None:
            return entry
        folder = self.folder_of(key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _locked(folder.parent / f"{key}.lock"):
            entry = self.open(key)  # filled by another run while this one waited
            if entry is not None:
                return entry
            for stale in [folder, *folder.parent.glob(f".{key}.*.tmp")]:  # damaged, or a killed fill's
                shutil.rmtree(stale, ignore_errors=True)
            self._write(folder, decode())
        entry = self.open(key)
        if entry is None:  # pragma: no cover - written and renamed just now
            raise UserError(f"the data cache entry {folder} cannot be read back: delete {self.root} and run again")
        return entry

    def _write(self, folder: Path, pair: DecodedPair) -> None:
        size = pair.raw.nbytes + pair.classes.nbytes + (0 if pair.instances is None else pair.instances.nbytes)
        self.require_space(size)
        temporary = folder.parent / f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        temporary.mkdir()
        try:
            _save(temporary / "image.npy", pair.raw)
            _save(temporary / "label.npy", pair.classes.astype(np.uint8, copy=False))
            if pair.instances is not None:
                _save(temporary / "instances.npy", pair.instances.astype(np.int32, copy=False))
            meta = {
                "format": FORMAT,
                "name": pair.name,
                "shape": list(pair.raw.shape),
                "low": pair.scaling.low,
                "high": pair.scaling.high,
                "digest": pair.digest,
                "instances": pair.instances is not None,
            }
            (temporary / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            os.rename(temporary, folder)  # the whole entry appears at once
            self.decoded += 1
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise

    def has_weights(self, entry: CacheEntry, key: str) -> bool:
        return _has_array(entry.weights_path(key), entry.shape[1:], "float32")

    def add_weights(self, entry: CacheEntry, key: str, compute: Callable[[np.ndarray], np.ndarray]) -> None:
        """Write the loss weights ``compute(class ids)`` of ``entry`` as weights-``key``.npy unless they are
        there already (``key`` names the weighting and its settings)."""
        path = entry.weights_path(key)
        if self.has_weights(entry, key):
            return
        folder = entry.folder
        with _locked(folder.parent / f"{folder.name}.lock"):
            if self.has_weights(entry, key):
                return
            for stale in folder.glob(f".{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
            weights = compute(entry.classes()).astype(np.float32, copy=False)
            self.require_space(weights.nbytes)
            temporary = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            try:
                _save(temporary, weights)
                os.replace(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise

    def require_space(self, size: int) -> None:
        """UserError unless the cache's disk has ``size`` bytes free (and a margin for everything else on it)."""
        folder = next((f for f in [self.root, *self.root.parents] if f.exists()), self.root)
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return
        if free < size + (64 << 20):
            raise UserError(
                f"the data cache {self.root} needs {in_units(size)} more but its disk has {in_units(free)} free: free "
                "some space, set data.cache_dir= to a folder on a larger disk, or use fewer or smaller images"
            )

    def size(self) -> tuple[int, int]:
        """(entries, bytes) under the cache's root."""
        entries = total = 0
        for meta in self.root.glob("*/*/meta.json"):
            entries += 1
            total += sum(f.stat().st_size for f in meta.parent.iterdir() if f.is_file())
        return entries, total
