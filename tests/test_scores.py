"""Pixel scores against hand-computed values; region scores cross-checked against scikit-image (the reference
implementation the ISBI scores follow)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from unetseg.scoring.board import ScoreBoard, image_scores
from unetseg.scoring.confusion import ConfusionMatrix
from unetseg.scoring.regions import (
    adapted_rand_error,
    connected_regions,
    contingency,
    entropies,
    fill_background,
    information_score,
)

skimage_metrics = pytest.importorskip(
    "skimage.metrics", reason="scikit-image is a test dependency: pip install -e '.[test]'"
)


def membranes(size: int, spacing: int, offset: int = 0, width: int = 1) -> np.ndarray:
    """A grid of cells (class 1) separated by membrane lines (class 0)."""
    classes = np.ones((size, size), np.uint8)
    for start in range(offset, size, spacing):
        classes[start : start + width, :] = 0
        classes[:, start : start + width] = 0
    return classes


def random_blobs(size: int, seed: int, fraction: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.random((size // 4, size // 4))
    return (np.kron(noise, np.ones((4, 4))) < fraction).astype(np.uint8)


def skimage_rand_error(truth: np.ndarray, predicted: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        error, _, _ = skimage_metrics.adapted_rand_error(
            connected_regions(truth), connected_regions(predicted), ignore_labels=(0,)
        )
    return float(error)


PAIRS = {
    "identical grids": (membranes(64, 16), membranes(64, 16)),
    "shifted grid": (membranes(64, 16), membranes(64, 16, offset=3)),
    "merged cells (missing membranes)": (membranes(64, 8), membranes(64, 16)),
    "split cells (extra membranes)": (membranes(64, 16), membranes(64, 8)),
    "thick predicted membranes": (membranes(64, 16), membranes(64, 16, width=3)),
    "random blobs": (random_blobs(64, 0, 0.6), random_blobs(64, 1, 0.6)),
    "all foreground vs all foreground": (np.ones((32, 32), np.uint8), np.ones((32, 32), np.uint8)),
    "all foreground vs grid": (np.ones((32, 32), np.uint8), membranes(32, 8)),
    "grid vs all membrane": (membranes(32, 8), np.zeros((32, 32), np.uint8)),
    "grid vs all foreground": (membranes(32, 8), np.ones((32, 32), np.uint8)),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_adapted_rand_error_matches_skimage(name: str) -> None:
    truth, predicted = PAIRS[name]
    ours = adapted_rand_error(contingency(connected_regions(truth), connected_regions(predicted)))
    assert ours == pytest.approx(skimage_rand_error(truth, predicted), abs=1e-12)


def test_rand_error_orders_predictions_sensibly() -> None:
    truth = membranes(64, 16)
    perfect = adapted_rand_error(contingency(connected_regions(truth), connected_regions(truth)))
    merged = adapted_rand_error(contingency(connected_regions(truth), connected_regions(membranes(64, 32))))
    assert perfect == 0.0 and merged > 0.3


def test_empty_truth_is_undefined_like_skimage() -> None:
    empty = np.zeros((32, 32), np.uint8)
    for predicted in (empty, np.ones((32, 32), np.uint8)):
        table = contingency(connected_regions(empty), connected_regions(predicted))
        assert math.isnan(adapted_rand_error(table)) and math.isnan(skimage_rand_error(empty, predicted))
        assert math.isnan(information_score(table))


@pytest.mark.parametrize("name", list(PAIRS))
def test_information_terms_match_skimage_variation_of_information(name: str) -> None:
    truth, predicted = PAIRS[name]
    true_regions, predicted_regions = connected_regions(truth), connected_regions(predicted)
    h_true, h_predicted, mutual = entropies(contingency(true_regions, predicted_regions))
    # skimage returns H(prediction | truth) and H(truth | prediction), in bits, over the truth's non-zero pixels.
    h_predicted_given_true, h_true_given_predicted = skimage_metrics.variation_of_information(
        true_regions, predicted_regions, ignore_labels=(0,)
    )
    assert (h_true - mutual) / math.log(2) == pytest.approx(h_true_given_predicted, abs=1e-9)
    assert (h_predicted - mutual) / math.log(2) == pytest.approx(h_predicted_given_true, abs=1e-9)


def test_information_score_is_one_for_identical_and_lower_for_merged() -> None:
    truth = membranes(64, 16)
    same = information_score(contingency(connected_regions(truth), connected_regions(truth)))
    merged = information_score(contingency(connected_regions(truth), connected_regions(membranes(64, 32))))
    assert same == pytest.approx(1.0) and 0 < merged < 0.9


def test_filling_background_thins_membranes_to_the_nearest_cell() -> None:
    truth = membranes(64, 16)
    thick = cv2.erode(truth, np.ones((3, 3), np.uint8))  # every membrane one pixel wider on both sides
    filled = fill_background(connected_regions(thick))
    assert filled.min() >= 1 and filled.max() == connected_regions(thick).max()
    assert adapted_rand_error(contingency(connected_regions(truth), filled)) < 0.02
    assert adapted_rand_error(contingency(connected_regions(truth), connected_regions(thick))) > 0.3
    nothing = np.zeros((8, 8), np.int32)
    assert np.array_equal(fill_background(nothing), nothing)
    # a gap in a membrane still merges the two cells it should separate
    gap = membranes(64, 16)
    gap[16, 4:12] = 1
    merged = image_scores(gap, truth, ["membrane", "cell"])["rand_error"]
    assert merged > 0.01


def test_regions_are_four_connected() -> None:
    diagonal = np.ones((5, 5), np.uint8)
    for i in range(5):
        diagonal[i, 4 - i] = 0  # a one-pixel diagonal membrane
    assert connected_regions(diagonal).max() == 2


def test_image_scores_and_scoreboard() -> None:
    truth = membranes(64, 16)
    predicted = membranes(64, 16, width=2)
    scores = image_scores(predicted, truth, ["membrane", "cell"])
    wrong = int((predicted != truth).sum())
    assert scores["pixel_error"] == pytest.approx(wrong / truth.size)
    assert scores["dice_membrane"] == pytest.approx(
        2 * int((truth == 0).sum()) / (int((truth == 0).sum()) + int((predicted == 0).sum()))
    )
    board = ScoreBoard(["membrane", "cell"])
    board.add("a", predicted, truth)
    board.add("b", truth, truth)
    summary = board.summary()
    assert summary["pixel_error"] == pytest.approx(wrong / (2 * truth.size))
    assert summary["rand_error"] == pytest.approx(scores["rand_error"] / 2)
    assert set(board.per_image) == {"a", "b"}


def test_dice_iou_accuracy_match_hand_computation() -> None:
    truth = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0]]])
    predicted = torch.tensor([[[1, 0, 0, 0], [1, 1, 1, 0]]])
    matrix = ConfusionMatrix(2)
    matrix.update(predicted, truth)
    scores = matrix.scores(["membrane", "cell"])
    # cell: TP 3, FP 1, FN 1 → Dice 6/8, IoU 3/5; membrane: TP 3, FP 1, FN 1 → the same
    assert scores["dice_cell"] == pytest.approx(0.75)
    assert scores["iou_cell"] == pytest.approx(0.6)
    assert scores["dice_membrane"] == pytest.approx(0.75)
    assert scores["pixel_error"] == pytest.approx(2 / 8)
    assert scores["dice"] == pytest.approx(0.75)


def test_metrics_accumulate_over_images_and_absent_class_scores_one() -> None:
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    matrix.update(torch.tensor([[1, 1]]), torch.tensor([[1, 0]]))
    scores = matrix.scores(["a", "b", "c"])
    assert scores["dice_a"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))
    assert scores["dice_b"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    assert scores["dice_c"] == 1.0
