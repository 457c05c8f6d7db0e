"""Labelled datasets in memory: loading and validating every file up front, the train/validation split,
and a torch Dataset that augments deterministically (same seed, epoch and index → same sample)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from unetseg.config import AugmentConfig, DataConfig, DataSource
from unetseg.data.augment import Sample, augment
from unetseg.data.labels import LabelRule
from unetseg.data.normalize import PercentileNormalizer
from unetseg.data.pairing import Pairing, find_folders, pair_files
from unetseg.data.synthetic import synthetic_sample
from unetseg.io.images import read_image, read_label
from unetseg.io.limits import DEFAULT_MAX_PIXELS, PixelLimit, read_header
from unetseg.runtime.errors import UserError
from unetseg.runtime.memory import available_memory
from unetseg.runtime.paths import user_path


@dataclass
class LabelledImages:
    """Normalised float32 images (C, H, W), uint8 class-id labels (H, W), their names, the true instance
    maps where the label files are instance maps, and optionally per-pixel loss weights (H, W)."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    names: list[str]
    weights: list[np.ndarray] | None = None  # per-pixel loss weights, for the weighted losses
    # int32 (H, W) object ids per image, None where the label is a mask (its objects: connected regions)
    instances: list[np.ndarray | None] | None = None
    pairing: str = ""  # how the files were found and paired, for the start-up line

    def __len__(self) -> int:
        return len(self.names)

    def instances_of(self, index: int) -> np.ndarray | None:
        return None if self.instances is None else self.instances[index]

    def _part(self, part: slice) -> LabelledImages:
        instances = None if self.instances is None else self.instances[part]
        return LabelledImages(
            self.images[part], self.labels[part], self.names[part], instances=instances, pairing=self.pairing
        )

    def split_last(self, count: int) -> tuple[LabelledImages, LabelledImages]:
        """Hold out the last ``count`` items as one contiguous block (adjacent EM slices correlate)."""
        cut = len(self) - count
        return self._part(slice(None, cut)), self._part(slice(cut, None))

    def __add__(self, other: LabelledImages) -> LabelledImages:
        """Both sets, this one first (without loss weights)."""
        instances = [*(self.instances or [None] * len(self)), *(other.instances or [None] * len(other))]
        return LabelledImages(
            self.images + other.images, self.labels + other.labels, self.names + other.names, instances=instances
        )

    def has_uniform_size(self) -> bool:
        return len({image.shape for image in self.images}) <= 1


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


def _amount(value: float, units: tuple[str, ...]) -> str:
    """1234567 → "1.2 M<unit>": one decimal, in the largest unit (steps of 1000) that is at least 1."""
    for power, unit in reversed(list(enumerate(units))):
        if value >= 1000**power or power == 0:
            return f"{value / 1000**power:.1f} {unit}"
    raise AssertionError  # pragma: no cover


def check_memory(needed: int, images: int, pixels: int, what: str, available: int | None = None) -> None:
    """UserError if loading ``images`` files of ``pixels`` pixels in all (``needed`` bytes decoded, see
    :func:`decoded_bytes`) would take more than the ``available`` bytes (default: :func:`available_memory`;
    nothing is checked if that is unknown)."""
    if available is None:
        available = available_memory()
    if available is None or needed <= available:
        return
    raise UserError(
        f"the data set ({what}) decodes to {_amount(needed, ('B', 'kB', 'MB', 'GB', 'TB'))} ({images:,} images, "
        f"{_amount(pixels, ('px', 'kpx', 'Mpx', 'Gpx', 'Tpx'))}), more than the "
        f"{_amount(available, ('B', 'kB', 'MB', 'GB', 'TB'))} of memory available: use fewer or smaller images, "
        "or crop them"
    )


def _holds_instances(rule: LabelRule, label_itemsize: int) -> bool:
    """Whether a label file of samples this wide is likely kept as an instance map too: always for the
    boundary target and data.label_encoding=instance, never for binary, and in auto for 16/32-bit files
    (an 8-bit instance map is a guess too far from the header alone)."""
    if rule.target == "boundary" or rule.encoding == "instance":
        return True
    return rule.encoding == "auto" and label_itemsize > 1


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
    images = pixels = instance_pixels = 0
    for pairing in pairings:
        for image_path, label_path in pairing.pairs:
            image, label = read_header(image_path), read_header(label_path)
            limit.check(image, str(image_path))
            limit.check(label, str(label_path))
            if image is None:  # an unreadable header: decoding names the file
                continue
            images += 1
            pixels += image.pixels
            if label is not None and _holds_instances(rule, label.itemsize):
                instance_pixels += image.pixels
    check_memory(decoded_bytes(pixels, channels, instance_pixels, weighted), images, pixels, what, available)


def _limit(max_pixels: int | None) -> PixelLimit:
    return PixelLimit(max_pixels, "data.max_pixels")


def _folder_pairs(root: Path, image_dir: str | None, label_dir: str | None, label_suffix: str | None) -> Pairing:
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
    pairing = _folder_pairs(root, image_dir, label_dir, label_suffix)
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
    pairs = pairing.pairs
    images, labels, instances = [], [], []
    for image_path, label_path in pairs:
        image = read_image(image_path, channels, limit)
        label = read_label(label_path, limit)
        if image.shape[1:] != label.shape:
            raise UserError(
                f"{image_path.name} is {image.shape[2]}×{image.shape[1]} but its label {label_path} is "
                f"{label.shape[1]}×{label.shape[0]}: image and label must be the same size"
            )
        images.append(normalizer(image))
        classes, objects = rule.apply(label, label_path)
        labels.append(classes)
        instances.append(objects)
    return LabelledImages(images, labels, [path.stem for path, _ in pairs], instances=instances, pairing=pairing.rule)


def synthetic_images(
    kind: str, count: int, size: int, seed: int, rule: LabelRule, normalizer: PercentileNormalizer
) -> LabelledImages:
    """``count`` generated images of ``kind`` (voronoi: EM-like cells; nuclei: touching nuclei)."""
    images, labels, instances = [], [], []
    for index in range(count):
        image, objects = synthetic_sample(kind, seed, index, size)
        images.append(normalizer(image[None]))
        labels.append(rule.classes_of_objects(objects))
        instances.append(objects)
    names = [f"synthetic_{seed}_{index:04d}" for index in range(count)]
    return LabelledImages(images, labels, names, instances=instances)


def label_rule(data: DataConfig, num_classes: int) -> LabelRule:
    return LabelRule(num_classes, data.label_encoding.value, data.target.value, data.boundary_width)


def load_splits(
    data: DataConfig, channels: int, rule: LabelRule, normalizer: PercentileNormalizer, weighted: bool = False
) -> tuple[LabelledImages, LabelledImages]:
    """The training and validation sets that ``data`` describes, normalised by ``normalizer``. Before any
    file is decoded, every size is checked against data.max_pixels and the decoded set against the memory
    available (``weighted``: the loss keeps a float32 weight per pixel too, as training.losses.WEIGHTED do)."""
    if data.source == DataSource.synthetic:
        if channels != 1:
            raise UserError("data=synthetic makes grayscale images: use model.in_channels=1")
        syn = data.synthetic
        everything = synthetic_images(syn.kind.value, syn.num_images, syn.size, syn.seed, rule, normalizer)
    else:
        assert data.root is not None  # check_train guarantees it
        roots = [data.root] if data.val_root is None else [data.root, data.val_root]
        pairings = [_folder_pairs(user_path(r), data.image_dir, data.label_dir, data.label_suffix) for r in roots]
        limit = _limit(data.max_pixels)
        what = " and ".join(f"{key}={root}" for key, root in zip(("data.root", "data.val_root"), roots, strict=False))
        check_files(pairings, channels, rule, limit, what, weighted)
        everything, *validation = (_decode_pairs(p, channels, rule, normalizer, limit) for p in pairings)
        if validation:
            return everything, validation[0]
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
        weights, item = self.items.weights, index % len(self.items)
        sample = Sample(self.items.images[item], self.items.labels[item], None if weights is None else weights[item])
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, int(self._epoch.item()), index])
            sample = augment(sample, self.augment, self.patch_size, rng)
        weight = torch.empty(0) if sample.weight is None else torch.from_numpy(sample.weight)
        return torch.from_numpy(sample.image), torch.from_numpy(sample.label.astype(np.int64)), weight
