"""Labelled datasets: loading and validating every file up front, in memory or (for sets larger than memory)
into the disk cache of unetseg.data.cache; the train/validation split; and a torch Dataset that augments
deterministically (same seed, epoch and index → same sample) whichever of the two holds the data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from unetseg.config import AugmentConfig, DataConfig, DataSource
from unetseg.data.augment import Sample, augment
from unetseg.data.cache import (
    CachedView,
    CacheEntry,
    DataCache,
    entry_key,
    read_classes,
    read_image,
    read_instances,
    weights_reader,
)
from unetseg.data.decoding import decode_pair, decoded
from unetseg.data.labels import LabelRule
from unetseg.data.normalize import PercentileNormalizer
from unetseg.data.pairing import Pairing, find_folders, pair_files
from unetseg.data.synthetic import synthetic_sample
from unetseg.io.limits import DEFAULT_MAX_PIXELS, PixelLimit, read_header
from unetseg.runtime.amounts import BYTES, PIXELS, in_units
from unetseg.runtime.console import progress_bars
from unetseg.runtime.errors import UserError
from unetseg.runtime.interrupts import stop_if_interrupted
from unetseg.runtime.memory import available_memory
from unetseg.runtime.paths import cache_root, user_path


@dataclass
class LabelledImages:
    """Normalised float32 images (C, H, W), uint8 class-id labels (H, W), their names, the true instance
    maps where the label files are instance maps, and optionally per-pixel loss weights (H, W).

    In memory the arrays are lists; from the disk cache (``entries`` set) they are views that read one image
    when indexed, and training crops its patches from the cached files (see :class:`SegmentationDataset`)."""

    images: Sequence[np.ndarray]
    labels: Sequence[np.ndarray]
    names: list[str]
    weights: Sequence[np.ndarray] | None = None  # per-pixel loss weights, for the weighted losses
    # int32 (H, W) object ids per image, None where the label is a mask (its objects: connected regions)
    instances: Sequence[np.ndarray | None] | None = None
    pairing: str = ""  # how the files were found and paired, for the start-up line
    digests: list[str] | None = None  # per item (unetseg.data.decoding.item_digest), for the run's fingerprint
    entries: list[CacheEntry] | None = None  # the items' disk-cache entries, when the data is read from there
    storage: str = ""  # where the data is held and why, for the start-up line

    def __len__(self) -> int:
        return len(self.names)

    def instances_of(self, index: int) -> np.ndarray | None:
        return None if self.instances is None else self.instances[index]

    def shapes(self) -> list[tuple[int, ...]]:
        """Every image's (C, H, W), without reading cached images."""
        if self.entries is not None:
            return [entry.shape for entry in self.entries]
        return [image.shape for image in self.images]

    def with_weights(self, compute: Callable[[np.ndarray], np.ndarray], key: str, cache: DataCache) -> None:
        """Per-pixel loss weights ``compute(class ids)`` for every item: in memory for items in memory, else
        written to ``cache`` once (``key`` names the weighting and its settings) and read patch by patch."""
        if self.entries is None:
            self.weights = [compute(label) for label in self.labels]
            return
        missing = [entry for entry in self.entries if not cache.has_weights(entry, key)]
        if missing:
            with progress_bars() as progress:
                task = progress.add_task("loss weights", total=len(missing), status=str(cache.root))
                for done, entry in enumerate(missing, 1):
                    cache.add_weights(entry, key, compute)
                    progress.advance(task)
                    stop_if_interrupted(
                        f"computing loss weights stopped after {done} of {len(missing)} image(s); those stay in "
                        f"{cache.root} and the next run starts from them"
                    )
        self.weights = CachedView(self.entries, weights_reader(key))

    def _part(self, part: slice) -> LabelledImages:
        instances = None if self.instances is None else self.instances[part]
        return LabelledImages(
            self.images[part],
            self.labels[part],
            self.names[part],
            instances=instances,
            pairing=self.pairing,
            digests=None if self.digests is None else self.digests[part],
            entries=None if self.entries is None else self.entries[part],
            storage=self.storage,
        )

    def split_last(self, count: int) -> tuple[LabelledImages, LabelledImages]:
        """Hold out the last ``count`` items as one contiguous block (adjacent EM slices correlate)."""
        cut = len(self) - count
        return self._part(slice(None, cut)), self._part(slice(cut, None))

    def split_block(self, block: slice) -> tuple[LabelledImages, LabelledImages]:
        """Hold out ``block``, one contiguous block, for validation; the items before and after it train."""
        before, after = self._part(slice(None, block.start)), self._part(slice(block.stop, None))
        return before + after, self._part(block)

    def __add__(self, other: LabelledImages) -> LabelledImages:
        """Both sets, this one first (without loss weights; its pairing and storage descriptions)."""
        digests = self.digests + other.digests if self.digests is not None and other.digests is not None else None
        if self.entries is not None and other.entries is not None:
            return cached_items(self.entries + other.entries, self.pairing, self.storage)
        instances = [*(self.instances or [None] * len(self)), *(other.instances or [None] * len(other))]
        return LabelledImages(
            [*self.images, *other.images],
            [*self.labels, *other.labels],
            self.names + other.names,
            instances=instances,
            pairing=self.pairing,
            digests=digests,
            storage=self.storage,
        )

    def has_uniform_size(self) -> bool:
        return len(set(self.shapes())) <= 1


def cached_items(entries: list[CacheEntry], pairing: str, storage: str) -> LabelledImages:
    """Items read from the disk cache, one image at a time."""
    instances = CachedView(entries, read_instances) if any(entry.has_instances for entry in entries) else None
    return LabelledImages(
        CachedView(entries, read_image),
        CachedView(entries, read_classes),
        [entry.name for entry in entries],
        instances=instances,
        pairing=pairing,
        digests=[entry.digest for entry in entries],
        entries=entries,
        storage=storage,
    )


def _existing_folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        siblings = sorted(p.name for p in path.parent.iterdir() if p.is_dir()) if path.parent.is_dir() else []
        there = f" (folders in {path.parent}: {', '.join(siblings)})" if siblings else ""
        raise UserError(f"{what} {path} does not exist or is not a folder: check the path{there}")
    return path


def decoded_bytes(pixels: int, channels: int, instance_pixels: int = 0, weighted: bool = False) -> int:
    """Bytes that ``pixels`` pixels of labelled images take once loaded (:class:`LabelledImages`): per pixel
    4 × ``channels`` (the normalised float32 image) + 1 (uint8 class ids) + 4 with a weighted loss (float32
    loss weights), and 4 more (the int32 instance map) for each of the ``instance_pixels`` whose label file is
    an instance map: 9 bytes per grey pixel with instance maps or a weighted loss, 5 without, 13 with both."""
    return pixels * (4 * channels + 1 + (4 if weighted else 0)) + 4 * instance_pixels


def check_memory(
    needed: int,
    images: int,
    pixels: int,
    what: str,
    available: int | None = None,
    fix: str = "use fewer or smaller images, or crop them",
) -> None:
    """UserError if loading ``images`` files of ``pixels`` pixels in all (``needed`` bytes decoded, see
    :func:`decoded_bytes`) would take more than the ``available`` bytes (default: :func:`available_memory`;
    nothing is checked if that is unknown)."""
    if available is None:
        available = available_memory()
    if available is None or needed <= available:
        return
    raise UserError(
        f"the data set ({what}) decodes to {in_units(needed, BYTES)} ({images:,} images, "
        f"{in_units(pixels, PIXELS)}), more than the "
        f"{in_units(available, BYTES)} of memory available: {fix}"
    )


@dataclass(frozen=True)
class Storage:
    """Where a training set is held (in memory, or read from the disk cache), and why, in words."""

    in_memory: bool
    reason: str


def choose_storage(data: DataConfig, size: SetSize, what: str, available: int | None = None) -> Storage:
    """data.in_memory: true (refused if the decoded set does not fit in the memory available), false (the
    disk cache), or auto: in memory when the decoded set takes at most data.memory_share of the memory free
    now, the disk cache otherwise."""
    mode = data.in_memory.lower()
    decoded = in_units(size.decoded, BYTES)
    if available is None:
        available = available_memory()
    if mode == "true":
        fix = "use fewer or smaller images, or train from the disk cache with data.in_memory=auto"
        check_memory(size.decoded, size.images, size.pixels, what, available, fix)
        return Storage(True, f"in memory ({decoded} decoded; data.in_memory=true)")
    if mode == "false":
        return Storage(False, "data.in_memory=false")
    if available is None:
        return Storage(True, f"in memory ({decoded} decoded; the free memory is unknown)")
    share = f"{data.memory_share:.0%} of the {in_units(available, BYTES)} of memory free"
    if size.decoded <= data.memory_share * available:
        return Storage(True, f"in memory ({decoded} decoded, within {share})")
    return Storage(False, f"{decoded} decoded would be more than {share}; data.in_memory=auto")


def data_cache(data: DataConfig) -> DataCache:
    """The disk cache data.cache_dir names; by default <unetseg's cache folder>/data."""
    return DataCache(user_path(data.cache_dir) if data.cache_dir else cache_root() / "data")


def _holds_instances(rule: LabelRule, label_itemsize: int) -> bool:
    """Whether a label file of samples this wide is likely kept as an instance map too: always for the
    boundary target and data.label_encoding=instance, never for binary, and in auto for 16/32-bit files
    (an 8-bit instance map is a guess too far from the header alone)."""
    if rule.target == "boundary" or rule.encoding == "instance":
        return True
    return rule.encoding == "auto" and label_itemsize > 1


@dataclass(frozen=True)
class SetSize:
    """A data set's size from its files' headers: images, pixels, and bytes once decoded in memory."""

    images: int
    pixels: int
    decoded: int
    cached: int = 0  # bytes in the disk cache: the image in its own dtype, class ids, instance maps, weights


def check_files(
    pairings: list[Pairing],
    channels: int,
    rule: LabelRule,
    limit: PixelLimit,
    what: str,
    weighted: bool = False,
    available: int | None = None,
) -> None:
    """Before anything is decoded, from the file headers: every image and label within ``limit``, and the
    whole set small enough to fit in memory once decoded (see :func:`check_memory`)."""
    size = measure_files(pairings, channels, rule, limit, weighted)
    check_memory(size.decoded, size.images, size.pixels, what, available)


def measure_files(
    pairings: list[Pairing], channels: int, rule: LabelRule, limit: PixelLimit, weighted: bool = False
) -> SetSize:
    """Every image and label within ``limit``, and the set's decoded size (:func:`decoded_bytes`), from the
    files' headers alone."""
    images = pixels = instance_pixels = cached = 0
    for pairing in pairings:
        for image_path, label_path in pairing.pairs:
            image, label = read_header(image_path), read_header(label_path)
            limit.check(image, str(image_path))
            limit.check(label, str(label_path))
            if image is None:  # an unreadable header: decoding names the file
                continue
            images += 1
            pixels += image.pixels
            instances = label is not None and _holds_instances(rule, label.itemsize)
            if instances:
                instance_pixels += image.pixels
            cached += image.pixels * (channels * image.itemsize + 1 + 4 * instances + 4 * weighted)
    return SetSize(images, pixels, decoded_bytes(pixels, channels, instance_pixels, weighted), cached)


def _limit(max_pixels: int | None) -> PixelLimit:
    return PixelLimit(max_pixels, "data.max_pixels")


def folder_pairs(root: Path, image_dir: str | None, label_dir: str | None, label_suffix: str | None) -> Pairing:
    _existing_folder(root, "data folder")
    image_folder, label_folder, found = find_folders(root, image_dir, label_dir)
    _existing_folder(image_folder, f"image folder (data.image_dir={image_dir})")
    _existing_folder(label_folder, f"label folder (data.label_dir={label_dir})")
    pairing = pair_files(image_folder, label_folder, label_suffix)
    return Pairing(pairing.pairs, f"{found}, {pairing.rule}")


def load_folder(
    root: Path,
    image_dir: str | None,
    label_dir: str | None,
    channels: int,
    rule: LabelRule,
    normalizer: PercentileNormalizer,
    label_suffix: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    weighted: bool = False,
) -> LabelledImages:
    """Read a data folder: its images and labels found and paired as unetseg.data.pairing says (folders
    given or looked for, names by stem or stem + suffix); every problem names its file. Sizes and the
    memory needed are checked from the headers first (:func:`check_files`)."""
    pairing = folder_pairs(root, image_dir, label_dir, label_suffix)
    limit = _limit(max_pixels)
    check_files([pairing], channels, rule, limit, str(root), weighted)
    return _decode_pairs(pairing, channels, rule, normalizer, limit)


def load_pairs(
    image_folder: Path,
    label_folder: Path,
    channels: int,
    rule: LabelRule,
    normalizer: PercentileNormalizer,
    label_suffix: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    weighted: bool = False,
) -> LabelledImages:
    """Every image in ``image_folder`` with its label from ``label_folder`` (by name: see
    unetseg.data.pairing), normalised; sizes and memory checked from the headers first."""
    _existing_folder(image_folder, "image folder")
    _existing_folder(label_folder, "label folder")
    pairing = pair_files(image_folder, label_folder, label_suffix)
    limit = _limit(max_pixels)
    check_files([pairing], channels, rule, limit, str(image_folder), weighted)
    return _decode_pairs(pairing, channels, rule, normalizer, limit)


def _decode_pairs(
    pairing: Pairing, channels: int, rule: LabelRule, normalizer: PercentileNormalizer, limit: PixelLimit
) -> LabelledImages:
    images, labels, instances, digests = [], [], [], []
    for image_path, label_path in pairing.pairs:
        pair = decode_pair(image_path, label_path, channels, rule, normalizer, limit)
        images.append(pair.scaling(pair.raw))
        labels.append(pair.classes)
        instances.append(pair.instances)
        digests.append(pair.digest)
    names = [path.stem for path, _ in pairing.pairs]
    return LabelledImages(images, labels, names, instances=instances, pairing=pairing.rule, digests=digests)


def _cache_pairs(
    cache: DataCache,
    pairing: Pairing,
    channels: int,
    rule: LabelRule,
    normalizer: PercentileNormalizer,
    limit: PixelLimit,
    storage: str,
    bytes_per_pair: float,
) -> LabelledImages:
    """The pairs from the disk cache, decoding (with a progress bar) those not cached yet (``bytes_per_pair``: what
    each takes there, on average, from the headers: a disk too small is said before the first one is written)."""
    settings = f"channels={channels}|{rule!r}|{normalizer!r}"
    keys = [entry_key(image, label, settings) for image, label in pairing.pairs]
    entries: list[CacheEntry | None] = [cache.open(key) for key in keys]
    missing = [index for index, entry in enumerate(entries) if entry is None]
    if missing:
        cache.require_space(round(bytes_per_pair * len(missing)))
        with progress_bars() as progress:
            task = progress.add_task("caching", total=len(missing), status=str(cache.root))
            for done, index in enumerate(missing, 1):
                image_path, label_path = pairing.pairs[index]
                entries[index] = cache.fill(
                    keys[index], lambda i=image_path, j=label_path: decode_pair(i, j, channels, rule, normalizer, limit)
                )
                progress.advance(task)
                stop_if_interrupted(
                    f"caching stopped after {done} of {len(missing)} file(s) to decode; those {done} stay in "
                    f"{cache.root} and the next run starts from them"
                )
    return cached_items([entry for entry in entries if entry is not None], pairing.rule, storage)


def synthetic_images(
    kind: str, count: int, size: int, seed: int, rule: LabelRule, normalizer: PercentileNormalizer
) -> LabelledImages:
    """``count`` generated images of ``kind`` (voronoi: EM-like cells; nuclei: touching nuclei)."""
    images, labels, instances, digests = [], [], [], []
    names = [f"synthetic_{seed}_{index:04d}" for index in range(count)]
    for index, name in enumerate(names):
        image, objects = synthetic_sample(kind, seed, index, size)
        pair = decoded(name, image[None], normalizer, rule.classes_of_objects(objects), objects)
        images.append(pair.scaling(pair.raw))
        labels.append(pair.classes)
        instances.append(objects)
        digests.append(pair.digest)
    return LabelledImages(images, labels, names, instances=instances, digests=digests, storage="in memory (generated)")


def fold_blocks(count: int, folds: int) -> list[slice]:
    """``count`` items in order cut into ``folds`` contiguous blocks whose sizes differ by at most one (the first
    ``count % folds`` one longer, as numpy.array_split): adjacent EM slices correlate, so they stay together."""
    size, longer = divmod(count, folds)
    bounds = [fold * size + min(fold, longer) for fold in range(folds + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:], strict=False)]


def label_rule(data: DataConfig, num_classes: int) -> LabelRule:
    return LabelRule(num_classes, data.label_encoding.value, data.target.value, data.boundary_width)


def load_splits(
    data: DataConfig,
    channels: int,
    rule: LabelRule,
    normalizer: PercentileNormalizer,
    weighted: bool = False,
    cache: DataCache | None = None,
) -> tuple[LabelledImages, LabelledImages]:
    """The training and validation sets that ``data`` describes, normalised by ``normalizer``. Before any
    file is decoded, every size is checked against data.max_pixels, and data.in_memory chooses between memory
    and the disk cache from the decoded size (``weighted``: the loss keeps a float32 weight per pixel too, as
    training.losses.WEIGHTED do; see :func:`choose_storage`). ``cache``: the disk cache to use (default: the
    one data.cache_dir names). The validation set is data.val_root, else block data.fold of data.folds
    (:func:`fold_blocks`), else the last data.val_fraction: contiguous blocks in natural order."""
    if data.source == DataSource.synthetic:
        if channels != 1:
            raise UserError("data=synthetic makes grayscale images: use model.in_channels=1")
        syn = data.synthetic
        everything = synthetic_images(syn.kind.value, syn.num_images, syn.size, syn.seed, rule, normalizer)
        what = f"data=synthetic (data.synthetic.num_images={syn.num_images})"
    else:
        assert data.root is not None  # check_train guarantees it
        roots = [data.root] if data.val_root is None else [data.root, data.val_root]
        pairings = [folder_pairs(user_path(r), data.image_dir, data.label_dir, data.label_suffix) for r in roots]
        limit = _limit(data.max_pixels)
        what = " and ".join(f"{key}={root}" for key, root in zip(("data.root", "data.val_root"), roots, strict=False))
        size = measure_files(pairings, channels, rule, limit, weighted)
        storage = choose_storage(data, size, what)
        if storage.in_memory:
            everything, *validation = (_decode_pairs(p, channels, rule, normalizer, limit) for p in pairings)
            for part in (everything, *validation):
                part.storage = storage.reason
        else:
            cache = cache or data_cache(data)
            reason = f"read from the disk cache {cache.root} ({storage.reason})"
            everything, *validation = (
                _cache_pairs(cache, p, channels, rule, normalizer, limit, reason, size.cached / max(1, size.images))
                for p in pairings
            )
        if validation:
            return everything, validation[0]
    if data.folds is not None:  # check_data: 0 <= fold < folds, no data.val_root
        if data.folds > len(everything):
            raise UserError(
                f"data.folds={data.folds}, but {what} holds {len(everything)} labelled image(s): choose "
                f"data.folds between 2 and {len(everything)}, so that every fold validates on at least one image"
            )
        return everything.split_block(fold_blocks(len(everything), data.folds)[data.fold])
    val_count = max(1, round(len(everything) * data.val_fraction))
    if len(everything) - val_count < 1:
        raise UserError(
            f"only {len(everything)} labelled image(s): need at least 2 to hold one out for validation, "
            "or give a separate folder with data.val_root=..."
        )
    return everything.split_last(val_count)


class SegmentationDataset(Dataset):
    """Serves (image float32 (C, H, W), label int64 (H, W), weight float32 (H, W)) tensors, augmented
    as ``augment`` says; ``weight`` is an empty tensor when the items carry no loss weights."""

    def __init__(
        self,
        items: LabelledImages,
        seed: int,
        augment: AugmentConfig | None = None,
        patch_size: int | None = None,
        samples_per_epoch: int | None = None,
    ) -> None:
        self.items = items
        self.seed = seed
        self.augment = augment
        self.patch_size = patch_size
        # With crops, one epoch can draw several samples from each image (index i uses image i mod n).
        self.length = samples_per_epoch or len(items)
        # Shared memory, so persistent DataLoader workers see the epoch the main process sets.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Augmentation depends on (seed, epoch, index) only: the same with any number of workers."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items, item = self.items, index % len(self.items)
        weight = None if items.weights is None else items.weights[item]
        if self.augment is None:
            sample = Sample(items.images[item], items.labels[item], None if weight is None else np.array(weight))
        else:
            rng = np.random.default_rng([self.seed, int(self._epoch.item()), index])
            if items.entries is None:
                held = Sample(items.images[item], items.labels[item], weight)
                sample = augment(held, self.augment, self.patch_size, rng)
            else:  # the crop is read from the memory-mapped files, and only it is normalised: the same sample
                entry = items.entries[item]
                raw = Sample(entry.raw_image(), entry.raw_classes(), weight)
                sample = augment(raw, self.augment, self.patch_size, rng, entry.scaling)
        weight = torch.empty(0) if sample.weight is None else torch.from_numpy(sample.weight)
        return torch.from_numpy(sample.image), torch.from_numpy(sample.label.astype(np.int64)), weight
