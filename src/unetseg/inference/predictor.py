"""Turning images into class-id masks with a checkpoint: the code predict and evaluate share."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg.config import InferenceConfig
from unetseg.data.normalize import Scaling
from unetseg.inference.backends import build_network
from unetseg.inference.sliding_window import (
    Prepare,
    TileGrid,
    assemble,
    blended_rows,
    mean_of,
    plan_tiles,
    single_pass_input,
    single_pass_output,
    with_tta,
)
from unetseg.model.checkpoint import Checkpoint
from unetseg.model.ensemble import ensemble_name, load_members, shared_threshold
from unetseg.model.head import classes_from_probabilities
from unetseg.objects.instances import InstanceRule, boundary_evidence, make_instances, objects_from, resolve_rule
from unetseg.runtime.device import resolve_device
from unetseg.runtime.errors import UserError
from unetseg.runtime.precision import FastPath, choose_fast_path


@dataclass
class Segmentation:
    """One image's prediction as predict keeps it: class ids, probabilities only when they are written
    (as uint16 × 65535 or float32), and the normalised input a few rows at a time (for overlays); the
    objects, when they are asked for."""

    classes: np.ndarray  # (H, W) uint8
    probabilities: np.ndarray | None  # (K, H, W) uint16 or float32
    normalised_rows: Callable[[slice], np.ndarray]  # rows → (C, rows, W) float32 in [0, 1]
    image: np.ndarray | None = None  # the raw (C, H, W) input, for the objects' intensities
    instances: np.ndarray | None = None  # (H, W) uint16/uint32 object ids, when objects are made


@dataclass(frozen=True)
class Tiling:
    """How to cut large images: ``tile`` None runs each image whole; ``margin`` mirrored pixels of context
    around each image (see unetseg.inference.sliding_window)."""

    tile: int | None = None
    overlap: float = 0.5
    gaussian: bool = True
    batch_size: int = 4
    tta: str = "none"
    margin: int = 0


class Predictor:
    """One checkpoint, or an ensemble of several (checked to fit together: unetseg.model.ensemble.load_members)
    whose probabilities are averaged per tile batch, each member with its own test-time augmentation: the
    members run one after the other on the same batch, so memory holds one member's output beside the sum."""

    def __init__(
        self,
        checkpoint: Checkpoint | Sequence[Checkpoint],
        fast: FastPath,
        threshold: float | None = None,
        tiling: Tiling | None = None,
        backend: str = "torch",
        name: str = "",
    ) -> None:
        self.members = [checkpoint] if isinstance(checkpoint, Checkpoint) else list(checkpoint)
        self.checkpoint = self.members[0]  # classes, input and normalisation: the same for every member
        self.fast = fast
        self.name = name  # for the start-up line, e.g. "ensemble outputs/sweep/x/ensemble.yaml (5 members)"
        common, self.threshold_note = shared_threshold(self.members)
        self.threshold = common if threshold is None else threshold
        if threshold is not None:
            self.threshold_note = ""
        self.tiling = tiling or Tiling()
        depth = max(member.model.depth for member in self.members)
        self.size_multiple = 2**depth  # every member's input side is a multiple of its 2**depth
        if self.tiling.tile is not None and self.tiling.tile < self.size_multiple:
            raise UserError(
                f"tile_size={self.tiling.tile} is smaller than this network's minimum input ({self.size_multiple} "
                f"px for depth {depth}): use a larger tile_size"
            )
        self.networks = [build_network(member, fast, backend) for member in self.members]
        self.network = self.networks[0]
        self.forward = mean_of([with_tta(network, self.tiling.tta) for network in self.networks])
        self.instance_rule: InstanceRule | None = None  # set when objects are asked for

    def use_instances(self, method: str, **settings: Any) -> InstanceRule:
        """Make objects with this rule from now on (one-line error if the network has no foreground)."""
        c = self.checkpoint
        self.instance_rule = resolve_rule(method, c.target, c.class_names, **settings)
        return self.instance_rule

    def objects_of(self, classes: np.ndarray, probabilities: np.ndarray | None = None) -> np.ndarray:
        """(H, W) class ids (and their (K, H, W) probabilities, for boundary networks) → object ids."""
        assert self.instance_rule is not None, "use_instances first"
        return objects_from(classes, probabilities, self.instance_rule)

    def describe(self) -> str:
        """e.g. ``cpu · OpenVINO bf16 · 2 threads · tiles ≤ 512 px, overlap 0.5 · TTA none · threshold 0.5``"""
        t = self.tiling
        tiles = f"tiles ≤ {t.tile} px, overlap {t.overlap}" if t.tile else "whole images"
        margin = f", margin {t.margin} px" if t.margin else ""
        objects = f" · {self.instance_rule.describe()}" if self.instance_rule is not None else ""
        name = f"{self.name} · " if self.name else ""
        threshold = f"threshold {self.threshold:g}{self.threshold_note}"
        return f"{name}{self.network.describe()} · {tiles}{margin} · TTA {t.tta} · {threshold}{objects}"

    @property
    def in_channels(self) -> int:
        return self.checkpoint.model.in_channels

    @property
    def num_classes(self) -> int:
        return max(2, self.checkpoint.model.num_classes)

    @property
    def num_outputs(self) -> int:
        """Probability channels: 1 (foreground) for a binary network, else one per class."""
        return self.checkpoint.model.num_classes

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """Raw (C, H, W) image of any dtype → float32 in [0, 1], exactly as in training."""
        return self.checkpoint.normalization(image)

    def scaling_of(self, image: np.ndarray) -> Scaling:
        """The normalisation of this raw image, to apply to parts of it (``normalise`` = fit and apply)."""
        return self.checkpoint.normalization.fit(image)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Raw (C, H, W) image of any dtype → (K, H, W) float32 probabilities (K = 1 for a binary net)."""
        return self.probabilities_of(self.normalise(image))

    def probabilities_of(self, normalised: np.ndarray) -> np.ndarray:
        """Normalised (C, H, W) image → (K, H, W) float32 probabilities."""
        _, height, width = normalised.shape
        rows = self.probability_rows(normalised, lambda crops: crops.astype(np.float32, copy=False))
        return assemble(rows, self.num_outputs, height, width)

    @torch.inference_mode()
    def probability_rows(
        self, image: np.ndarray, prepare: Prepare, on_tiles: Callable[[int], None] | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(C, H, W) image → (first row, (K, rows, W) float32 probabilities) bands, top to bottom.

        ``prepare`` normalises raw crops (``scaling_of(image)``), so a large image is never held as
        float32; a band can be turned into classes before the next one is computed.
        """
        grid = self.grid(*image.shape[1:])
        t = self.tiling
        yield from blended_rows(
            image, prepare, self.forward, grid, t.gaussian, t.batch_size, self.num_outputs, on_tiles
        )

    def grid(self, height: int, width: int) -> TileGrid:
        """Where the tiles of a ``height × width`` image go (one pass when it fits in a tile)."""
        t = self.tiling
        return plan_tiles(height, width, t.tile, t.overlap, t.margin, self.size_multiple)

    @torch.inference_mode()
    def segment_batch(
        self, images: list[np.ndarray], probability_dtype: type[np.generic] | None = None
    ) -> list[Segmentation]:
        """Several raw (C, H, W) images that one pass each covers, with the same input shape (the
        pipeline groups them by :meth:`grid`), in one forward pass: the results equal ``segment`` one by one."""
        grids = [self.grid(*image.shape[1:]) for image in images]
        assert all(g.single and g.input_shape == grids[0].input_shape for g in grids), "group by grid first"
        scalings = [self.scaling_of(image) for image in images]
        batch = np.stack([s(single_pass_input(i, g)) for i, s, g in zip(images, scalings, grids, strict=True)])
        outputs = self.forward(torch.from_numpy(batch)).float().cpu().numpy()
        return [
            self._segmentation(image, scaling, iter([(0, single_pass_output(output, grid))]), probability_dtype)
            for image, scaling, output, grid in zip(images, scalings, outputs, grids, strict=True)
        ]

    def segment(
        self,
        image: np.ndarray,
        probability_dtype: type[np.generic] | None = None,
        on_tiles: Callable[[int], None] | None = None,
    ) -> Segmentation:
        """Raw (C, H, W) image → classes (and probabilities if a dtype is given), band by band: memory is
        the image, the outputs and one band of float32, never (K, H, W) float32 for the whole image."""
        scaling = self.scaling_of(image)
        return self._segmentation(image, scaling, self.probability_rows(image, scaling, on_tiles), probability_dtype)

    def _segmentation(
        self,
        image: np.ndarray,
        scaling: Scaling,
        bands: Iterator[tuple[int, np.ndarray]],
        probability_dtype: type[np.generic] | None,
    ) -> Segmentation:
        """Probability bands of one image → its Segmentation, band by band."""
        _, height, width = image.shape
        classes = np.empty((height, width), np.uint8)
        kept = None if probability_dtype is None else np.empty((self.num_outputs, height, width), probability_dtype)
        rule = self.instance_rule
        evidence = None  # the boundary rule's inputs, kept compactly (uint8 and bool) band by band
        if rule is not None and rule.needs_boundary_probability:
            evidence = (np.empty((height, width), np.uint8), np.empty((height, width), bool))
        for top, band in bands:
            rows = slice(top, top + band.shape[1])
            classes[rows] = self.classes_of(band)
            if evidence is not None:
                evidence[0][rows], evidence[1][rows] = boundary_evidence(band, rule)
            if kept is not None:
                kept[:, rows] = _stored(band, kept.dtype)
        result = Segmentation(classes, kept, lambda rows: scaling(image[:, rows]), image)
        if rule is not None:
            result.instances = make_instances(classes, rule, evidence)
        return result

    def tile_count(self, height: int, width: int) -> int:
        """How many network passes (before test-time augmentation) an image of this size takes."""
        return self.grid(height, width).count

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Raw (C, H, W) image → (H, W) uint8 class ids: probability ≥ threshold, or argmax."""
        return self.classes_of(self.probabilities(image))

    def classes_of(self, probabilities: np.ndarray) -> np.ndarray:
        """(K, H, W) probabilities → (H, W) uint8 class ids."""
        classes = classes_from_probabilities(torch.from_numpy(probabilities)[None], self.threshold)
        return classes[0].to(torch.uint8).numpy()


def build_predictor(cfg: InferenceConfig, paths: list[Path], given: Any = None) -> Predictor:
    """The Predictor that the shared inference settings (conf/inference.yaml) describe, for one checkpoint or
    an ensemble of several (``given``: what checkpoint= said, for the start-up line)."""
    fast = choose_fast_path(resolve_device(cfg.device), cfg.precision.value, cfg.channels_last)
    tiling = Tiling(cfg.tile_size, cfg.overlap, cfg.gaussian, cfg.batch_size, cfg.tta.value, cfg.margin)
    members = load_members(paths)
    return Predictor(members, fast, cfg.threshold, tiling, cfg.backend.value, ensemble_name(given, paths))


def objects_settings(cfg: InferenceConfig) -> tuple[str, dict[str, Any]]:
    """(method, the other settings) of the ``instances`` config, for Predictor.use_instances."""
    i = cfg.instances
    return i.method.value, {"min_size": i.min_size, "min_distance": i.min_distance, "seed_margin": i.seed_margin}


def _stored(probabilities: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 probabilities as kept for writing: unchanged, or × 65535 rounded for a 16-bit PNG."""
    if dtype == np.float32:
        return probabilities
    np.clip(probabilities, 0, 1, out=probabilities)
    probabilities *= 65535
    return np.rint(probabilities, out=probabilities)
