"""Predict at bounded memory: tiles are cut from the raw image with mirrored indices, the blend streams out
in bands, and only the outputs are kept at full size."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from conftest import FP32, trained_checkpoint
from unetseg.config import ModelSpec
from unetseg.data.normalize import PercentileNormalizer
from unetseg.data.synthetic import synthetic_pair
from unetseg.inference.predictor import Predictor, Tiling
from unetseg.inference.sliding_window import blended_rows, mirror_indices, mirrored_crop, plan_tiles
from unetseg.model import build_network
from unetseg.model.checkpoint import Checkpoint


@pytest.mark.parametrize("length", [1, 2, 5, 17])
def test_mirrored_indices_match_reflect_padding(length: int) -> None:
    axis = np.arange(length)
    pad = 3 * length + 2  # several bounces for short axes
    expected = np.pad(axis, pad, mode="reflect") if length > 1 else np.zeros(length + 2 * pad, int)
    assert (mirror_indices(-pad, length + 2 * pad, length) == expected).all()


def test_mirrored_crop_equals_a_crop_of_the_padded_image() -> None:
    image = np.random.default_rng(0).integers(0, 255, (2, 9, 13)).astype(np.uint8)
    padded = np.pad(image, ((0, 0), (4, 4), (4, 4)), mode="reflect")
    for top, left in [(-4, -4), (0, 0), (-2, 5), (3, 1)]:
        crop = mirrored_crop(image, top, left, 8)
        assert (crop == padded[:, top + 4 : top + 12, left + 4 : left + 12]).all()


@pytest.mark.parametrize("batch_size", [1, 3, 4, 100])  # 4 tiles a row: batches within rows, across rows, all
def test_bands_cover_every_row_once_and_count_the_tiles(batch_size: int) -> None:
    image = np.random.default_rng(1).random((1, 150, 70)).astype(np.float32)
    tiles = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return batch  # the identity: the blend of overlapping copies of the image is the image

    grid = plan_tiles(150, 70, 32, 0.5, 4, 16)
    bands = list(blended_rows(image, lambda x: x, forward, grid, True, batch_size, 1, tiles.append))
    tops = [top for top, _ in bands]
    assert tops == sorted(tops) and tops[0] == 0
    assert sum(band.shape[1] for _, band in bands) == 150
    assert all(band.shape[2] == 70 for _, band in bands)
    assert sum(tiles) == grid.count
    assert np.allclose(np.concatenate([band for _, band in bands], axis=1), image, atol=1e-6)


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("tile", [None, 48])
def test_streamed_classes_equal_the_whole_map_decision(num_classes: int, tile: int | None) -> None:
    """Predict's band-by-band path and the (K, H, W) API that evaluate uses give the same answer."""
    predictor = Predictor(trained_checkpoint(num_classes), FP32, tiling=Tiling(tile=tile, batch_size=2))
    image = synthetic_pair(0, 1, 100)[0][None]
    probabilities = predictor.probabilities_of(predictor.normalise(image))
    result = predictor.segment(image, np.float32)
    assert (result.classes == predictor.classes_of(probabilities)).all()
    assert np.array_equal(result.probabilities, probabilities)
    as_uint16 = predictor.segment(image, np.uint16).probabilities
    assert as_uint16.dtype == np.uint16
    assert np.abs(as_uint16 / 65535 - probabilities).max() <= 0.5 / 65535 + 1e-6
    assert np.array_equal(result.normalised_rows(slice(10, 20)), predictor.normalise(image)[:, 10:20])


@pytest.mark.slow  # 6 s: in make test, not in the inner loop
def test_segment_keeps_no_full_size_float_copy() -> None:
    """numpy reports its allocations to tracemalloc: a 1024² 8-bit image must be predicted in less than
    one float32 copy of it (4 MiB): no normalised or padded float copy, no float32 probability map. What
    remains is the uint8 classes (1 MiB), the percentile sample and one tile-high band."""
    size = 1024
    spec = ModelSpec("bilinear", 1, 1, 4, 2)  # untrained and tiny: only memory matters here
    checkpoint = Checkpoint(
        build_network(spec).state_dict(), spec, PercentileNormalizer(0.5, 99.5), ["bg", "fg"], 0.5, 1, {}
    )
    predictor = Predictor(checkpoint, FP32, tiling=Tiling(tile=64, batch_size=32))
    image = np.random.default_rng(0).integers(0, 255, (1, size, size)).astype(np.uint8)
    predictor.segment(image[:, :100, :100])  # warm up: lazy imports and caches are not the image's
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        predictor.segment(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before < size * size * 4, f"peak {(peak - before) / 2**20:.1f} MiB"
