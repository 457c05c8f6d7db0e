"""Sliding-window inference and test-time augmentation."""

import numpy as np
import pytest
import torch

from conftest import FP32
from conftest import trained_checkpoint as checkpoint
from unetseg.data.synthetic import synthetic_pair
from unetseg.inference.predictor import Predictor, Tiling
from unetseg.inference.sliding_window import dihedral_transforms, importance_map, plan_tiles, tile_starts, with_tta
from unetseg.runtime.errors import UserError


def test_the_fewest_tiles_cover_the_image_with_at_least_the_overlap() -> None:
    assert tile_starts(100, 128, 0.5) == [0]
    assert tile_starts(300, 128, 0.5) == [0, 57, 115, 172]  # 3 steps of 57.3 ≤ 64: 4 tiles, spread evenly
    assert tile_starts(256, 128, 0.0) == [0, 128]
    assert tile_starts(640, 512, 0.5) == [0, 128]  # a step of 128 ≤ 256: 2 tiles, not 3
    assert tile_starts(2048, 512, 0.5) == [0, 256, 512, 768, 1024, 1280, 1536]
    for length in (129, 300, 1000, 4097):
        for overlap in (0.0, 0.25, 0.5, 0.75):
            starts = tile_starts(length, 128, overlap)
            steps = np.diff(starts)
            assert starts[0] == 0 and starts[-1] == length - 128
            assert steps.max() <= 128 * (1 - overlap) + 1  # rounding to whole pixels moves a start by ≤ 0.5
            fewer = -(-(length - 128) // (128 * (1 - overlap) + 1e-9))  # steps needed at the longest step
            assert len(steps) == fewer


@pytest.mark.parametrize(
    ("size", "tile", "margin", "tiles", "input_shape"),
    [
        ((512, 512), 512, 0, 1, (512, 512)),  # an ISBI slice: one pass
        ((500, 300), 512, 0, 1, (512, 304)),  # one pass, padded only to the multiple of 16
        ((512, 512), 512, 64, 4, (512, 512)),  # 64 px of context each side: 640 → 2 × 2 tiles
        ((2048, 2048), 512, 0, 49, (512, 512)),  # 7 × 7 at overlap 0.5
        ((700, 3000), 512, 0, 2 * 11, (512, 512)),
        ((40, 3000), 512, 0, 11, (48, 512)),  # a thin strip: tiles only as high as the strip needs
        ((512, 512), None, 0, 1, (512, 512)),
        ((5, 7), 64, 0, 1, (16, 16)),
    ],
)
def test_tile_grid(size: tuple[int, int], tile: int | None, margin: int, tiles: int, input_shape: tuple) -> None:
    grid = plan_tiles(*size, tile, 0.5, margin, 16)
    assert grid.count == tiles and grid.input_shape == input_shape
    assert grid.single == (tiles == 1)


def test_gaussian_weights_peak_in_the_centre() -> None:
    weights = importance_map(64, 48, gaussian=True)
    assert weights.shape == (64, 48) and weights.max() == 1.0 and weights.min() > 0
    assert weights[32, 24] > weights[32, 8] > weights[0, 0]
    assert (importance_map(64, 64, gaussian=False) == 1).all()


@pytest.mark.parametrize("num_classes", [1, 3])
def test_tiled_and_whole_image_predictions_agree_in_the_interior(num_classes: int) -> None:
    image = synthetic_pair(0, 0, 200)[0][None]
    ck = checkpoint(num_classes)
    whole = Predictor(ck, FP32).probabilities(image)
    assert whole.std() > 0.05  # the network's output varies across the image
    for tile in (64, 96):
        tiled = Predictor(ck, FP32, tiling=Tiling(tile=tile, overlap=0.5)).probabilities(image)
        assert tiled.shape == whole.shape
        interior = (slice(None), slice(24, -24), slice(24, -24))
        assert np.abs(whole - tiled)[interior].mean() < 0.02  # tile edges see less context: small differences
        if num_classes == 1:
            same = ((whole >= 0.5) == (tiled >= 0.5))[interior]
        else:
            same = whole.argmax(0)[24:-24, 24:-24] == tiled.argmax(0)[24:-24, 24:-24]
        assert same.mean() > 0.98, same.mean()


def test_images_smaller_than_a_tile_and_odd_sizes() -> None:
    predictor = Predictor(checkpoint(), FP32, tiling=Tiling(tile=64))
    for size in ((5, 7), (40, 64), (65, 129)):
        image = np.random.default_rng(0).integers(0, 255, (1, *size)).astype(np.uint8)
        assert predictor.predict(image).shape == size


def test_tile_smaller_than_the_network_minimum_is_refused() -> None:
    with pytest.raises(UserError, match="minimum input"):
        Predictor(checkpoint(), FP32, tiling=Tiling(tile=4))


@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_tta_inverts_every_transform(tta: str) -> None:
    """With an identity 'network', averaging the mapped-back outputs must return the input exactly."""
    x = torch.rand(2, 1, 12, 12)
    assert len(dihedral_transforms(tta)) == (4 if tta == "flip" else 8)
    assert torch.allclose(with_tta(lambda batch: batch, tta)(x), x)


def test_tta_changes_little_on_a_sharp_network() -> None:
    image = synthetic_pair(0, 2, 96)[0][None]
    plain = Predictor(checkpoint(), FP32, tiling=Tiling(tile=64)).predict(image)
    averaged = Predictor(checkpoint(), FP32, tiling=Tiling(tile=64, tta="d4")).predict(image)
    assert (plain == averaged).mean() > 0.8
