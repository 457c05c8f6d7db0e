"""Objects from class maps (unetseg.objects), the boundary target, and the instance scores (matching)."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.segmentation import watershed

from unetseg.config import register_schemas
from unetseg.data.labels import LabelRule
from unetseg.data.synthetic import nuclei_sample, synthetic_pair, voronoi_sample
from unetseg.data.targets import BOUNDARY, INTERIOR, boundary_target
from unetseg.objects.instances import (
    InstanceRule,
    boundary_evidence,
    flood,
    make_instances,
    resolve_rule,
    touching_edge,
    true_objects,
)
from unetseg.objects.measure import columns, csv_text, measure_objects
from unetseg.runner import preflight
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import register_resolvers
from unetseg.scoring.board import ScoreBoard, image_scores
from unetseg.scoring.instances import THRESHOLDS, InstanceCounts, match_instances
from unetseg.scoring.names import INSTANCE_SCORES
from unetseg.scoring.regions import adapted_rand_error, contingency, information_score

DISC_AREA = math.pi * 30**2


def two_touching_discs() -> np.ndarray:
    """Instance map: two discs of radius 30 whose centres are 58 px apart (they touch along a short seam)."""
    objects = np.zeros((100, 170), np.int32)
    cv2.circle(objects, (50, 50), 30, 1, -1)
    second = np.zeros_like(objects)
    cv2.circle(second, (108, 50), 30, 1, -1)
    objects[(second > 0) & (objects == 0)] = 2
    return objects


def test_distance_watershed_splits_two_touching_discs() -> None:
    truth = two_touching_discs()
    classes = (truth > 0).astype(np.uint8)
    assert cv2.connectedComponents(classes, connectivity=4)[0] == 2  # one blob (plus background)
    objects = make_instances(classes, InstanceRule("distance", min_size=10, min_distance=5))
    areas = np.bincount(objects.ravel())[1:]
    assert len(areas) == 2
    assert np.all(np.abs(areas - DISC_AREA) <= 0.05 * DISC_AREA), areas


def test_boundary_watershed_splits_touching_discs_from_the_boundary_target() -> None:
    truth = two_touching_discs()
    target = boundary_target(truth, width=2)
    assert set(np.unique(target)) == {0, INTERIOR, BOUNDARY}
    # The interiors are apart: the boundary band runs along the seam and the outline.
    assert cv2.connectedComponents((target == INTERIOR).astype(np.uint8), connectivity=4)[0] == 3
    objects = make_instances(target, InstanceRule("boundary"))
    areas = np.bincount(objects.ravel())[1:]
    assert len(areas) == 2
    assert np.all(np.abs(areas - np.bincount(truth.ravel())[1:]) <= 0.05 * DISC_AREA), areas
    # From probabilities: seeds where the interior is confident, flooded over the boundary probability.
    probabilities = np.stack([target == c for c in range(3)]).astype(np.float32) * 0.9 + 0.1 / 3
    again = make_instances(target, InstanceRule("boundary"), boundary_evidence(probabilities, InstanceRule("boundary")))
    assert match_instances(truth, again).matches[0] == 2


def test_boundary_band_width() -> None:
    truth = np.zeros((40, 40), np.int32)
    truth[10:30, 10:30] = 1
    for width in (1, 2, 3):
        target = boundary_target(truth, width)
        assert (target == INTERIOR).sum() == (20 - 2 * width) ** 2
        assert (target[truth == 0] == 0).all()


def test_membrane_grid_gives_one_object_per_enclosed_cell() -> None:
    classes = np.ones((64, 96), np.uint8)  # class 1: cell, class 0: membrane lines every 16 px
    classes[::16, :] = 0
    classes[:, ::16] = 0
    objects = make_instances(classes, InstanceRule("membrane", min_size=10))
    assert objects.max() == (64 // 16) * (96 // 16)
    assert (objects > 0).all()  # membrane pixels joined their nearest cell
    sizes = np.bincount(objects.ravel())[1:]
    assert sizes.sum() == classes.size and sizes.min() >= 15 * 15


def test_small_objects_are_dropped_and_ids_follow_raster_order() -> None:
    classes = np.zeros((30, 30), np.uint8)
    classes[20:28, 2:10] = 1  # 64 px, lower
    classes[2:10, 20:28] = 1  # 64 px, upper: first in raster order
    classes[15, 15] = 1  # a speck
    objects = make_instances(classes, InstanceRule("distance", min_size=10))
    assert objects.max() == 2 and objects[15, 15] == 0
    assert objects[5, 25] == 1 and objects[25, 5] == 2
    assert touching_edge(objects).tolist() == []
    classes[0:3, 0:3] = 1
    assert touching_edge(make_instances(classes, InstanceRule("distance", min_size=5))).tolist() == [1]


def test_more_than_65535_objects_switch_to_uint32() -> None:
    classes = np.ones((520, 520), np.uint8)  # one-pixel cells between membrane lines: 260² = 67,600
    classes[::2, :] = 0
    classes[:, ::2] = 0
    objects = make_instances(classes, InstanceRule("membrane", min_size=1))
    assert objects.dtype == np.uint32 and objects.max() == 260 * 260
    few = make_instances(classes[:100, :100], InstanceRule("membrane", min_size=1))
    assert few.dtype == np.uint16 and few.max() == 50 * 50


def test_rule_choice_and_refusals() -> None:
    assert resolve_rule("auto", "boundary", ["background", "interior", "boundary"]).method == "boundary"
    assert resolve_rule("auto", "mask", ["membrane", "cell"]).method == "membrane"
    assert resolve_rule("auto", "mask", ["background", "nucleus"]).method == "distance"
    with pytest.raises(UserError, match="no foreground to split into objects"):
        resolve_rule("auto", "mask", ["background", "tumour", "stroma"])
    with pytest.raises(UserError, match="needs a network trained with data.target=boundary"):
        resolve_rule("boundary", "mask", ["background", "nucleus"])


def test_binary_labels_cannot_train_the_boundary_target() -> None:
    rule = LabelRule(3, "auto", "boundary", 2)
    with pytest.raises(UserError, match=r"needs instance label maps .* is a binary mask"):
        rule.apply(np.array([[0, 255], [255, 0]], np.uint8), Path("a.png"))
    blobs = np.zeros((9, 9), np.uint16)
    blobs[1:3, 1:3] = blobs[5:8, 5:8] = 65535  # a 16-bit binary mask of two blobs is a mask, not one object
    assert LabelRule(1).apply(blobs, Path("b.png"))[1] is None
    assert LabelRule(1, "instance").apply(blobs, Path("b.png"))[1] is not None
    single = (blobs > 0).astype(np.uint16) * 7  # a 16-bit instance map that holds one object (id 7)
    assert LabelRule(3, "auto", "boundary").apply(single, Path("c.png"))[1].max() == 7
    classes, instances = rule.apply(two_touching_discs().astype(np.uint16), Path("a.png"))
    assert instances is not None and instances.max() == 2 and classes.max() == BOUNDARY


def test_synthetic_instances_agree_with_the_masks() -> None:
    image, label = synthetic_pair(0, 3, 96)
    _, cells = voronoi_sample(0, 3, 96)
    assert np.array_equal(cells > 0, label > 0)
    assert cells.max() == len(np.unique(cells)) - 1  # ids 1..n, each a 4-connected cell
    image, nuclei = nuclei_sample(0, 0, 128)
    assert image.dtype == np.uint16 and nuclei.max() >= 5
    again_image, again_nuclei = nuclei_sample(0, 0, 128)
    assert np.array_equal(image, again_image) and np.array_equal(nuclei, again_nuclei)
    touching = (nuclei[:, 1:] != nuclei[:, :-1]) & (nuclei[:, 1:] > 0) & (nuclei[:, :-1] > 0)
    assert touching.any()  # some nuclei touch: the case the boundary target is for


# ---- measurements ----------------------------------------------------------------------------------------


def test_object_rows_areas_sum_to_the_foreground() -> None:
    image, nuclei = nuclei_sample(0, 1, 128)
    rows = measure_objects(nuclei, image[None], pixel_size=0.5)
    assert len(rows) == nuclei.max()
    assert sum(row["area_px"] for row in rows) == np.count_nonzero(nuclei)
    assert rows[0]["area_um2"] == pytest.approx(rows[0]["area_px"] * 0.25)
    first = nuclei == rows[0]["id"]
    assert rows[0]["intensity_mean"] == pytest.approx(image[first].mean())
    assert rows[0]["intensity_max"] == image[first].max()
    text = csv_text(rows, columns(1, 0.5, stack=False))
    header = text.splitlines()[0].split(",")
    assert header[:3] == ["id", "area_px", "area_um2"] and "touches_edge" in header
    assert len(text.splitlines()) == len(rows) + 1
    assert measure_objects(np.zeros((8, 8), np.uint16), np.zeros((1, 8, 8), np.uint8)) == []


def test_colour_images_get_intensities_per_channel() -> None:
    objects = np.zeros((20, 20), np.uint16)
    objects[5:10, 5:10] = 1
    image = np.stack([np.full((20, 20), value, np.uint8) for value in (10, 20, 30)])
    (row,) = measure_objects(objects, image)
    assert (row["intensity_mean_c0"], row["intensity_mean_c1"], row["intensity_mean_c2"]) == (10, 20, 30)
    assert "area_um2" not in row


# ---- instance scores -------------------------------------------------------------------------------------


def reference_scores(truth: np.ndarray, predicted: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """TP, FP, FN by the definition, independently: every pair's IoU from its masks, then the largest set
    of disjoint pairs with IoU ≥ threshold by trying every assignment (tiny cases only)."""
    true_ids = [i for i in np.unique(truth) if i > 0]
    predicted_ids = [j for j in np.unique(predicted) if j > 0]

    def iou(i: int, j: int) -> float:
        a, b = truth == i, predicted == j
        return (a & b).sum() / (a | b).sum()

    best = 0
    for size in range(min(len(true_ids), len(predicted_ids)), 0, -1):
        for chosen in itertools.combinations(true_ids, size):
            for partners in itertools.permutations(predicted_ids, size):
                if all(iou(i, j) >= threshold for i, j in zip(chosen, partners, strict=True)):
                    best = size
                    break
            if best:
                break
        if best:
            break
    return best, len(predicted_ids) - best, len(true_ids) - best


def test_instance_scores_by_hand() -> None:
    truth = np.zeros((10, 10), np.int32)
    truth[:5, :5] = 1  # 25 px
    truth[5:, 5:] = 2  # 25 px
    predicted = np.zeros((10, 10), np.int32)
    predicted[:5, :4] = 7  # IoU 20/25 = 0.8 with object 1
    predicted[6:, 6:] = 3  # IoU 16/25 = 0.64 with object 2
    predicted[0, 9] = 9  # a false positive
    counts = match_instances(truth, predicted)
    assert counts.true_objects == 2 and counts.predicted_objects == 3
    assert counts.matches.tolist() == [2, 2, 2, 1, 1, 1, 1, 0, 0, 0]  # 0.64 counts up to 0.60, 0.8 up to 0.80
    scores = counts.scores()
    assert scores["ap50"] == pytest.approx(2 / 3)  # TP 2, FP 1, FN 0
    assert scores["ap75"] == pytest.approx(1 / 4)  # TP 1, FP 2, FN 1
    assert scores["f1_50"] == pytest.approx(0.8)
    assert scores["matched_iou"] == pytest.approx((0.8 + 0.64) / 2)
    assert scores["pq"] == pytest.approx(0.72 * 0.8)
    assert scores["count_error"] == 1


def test_instance_scores_of_empty_maps() -> None:
    truth = np.zeros((6, 6), np.int32)
    truth[1:3, 1:3] = 1
    empty = np.zeros_like(truth)
    missed = match_instances(truth, empty).scores()
    assert missed["ap50"] == 0 and missed["pq"] == 0 and missed["count_error"] == 1
    assert math.isnan(match_instances(truth, empty).per_threshold()["0.50"]["precision"])  # nothing predicted
    invented = match_instances(empty, truth).scores()
    assert invented["ap50"] == 0 and math.isnan(match_instances(empty, truth).per_threshold()["0.50"]["recall"])
    assert math.isnan(match_instances(empty, empty).scores()["ap50"])


def test_one_to_many_overlaps_match_at_most_once() -> None:
    truth = np.zeros((4, 8), np.int32)
    truth[:, :] = 1  # one object of 32 px
    predicted = np.zeros_like(truth)
    predicted[:, :4] = 1  # IoU exactly 0.5
    predicted[:, 4:] = 2  # IoU exactly 0.5
    counts = match_instances(truth, predicted)
    assert counts.matches[0] == 1 and counts.matches[1] == 0  # one match at 0.50, none at 0.55
    assert reference_scores(truth, predicted, 0.5) == (1, 1, 0)


@pytest.mark.parametrize("seed", range(6))
def test_matching_agrees_with_the_definition_on_random_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = np.zeros((24, 24), np.int32)
    predicted = np.zeros((24, 24), np.int32)
    for target in (truth, predicted):
        for object_id in range(1, int(rng.integers(1, 5)) + 1):
            top, left = rng.integers(0, 16, size=2)
            height, width = rng.integers(3, 9, size=2)
            target[top : top + height, left : left + width] = object_id
    counts = match_instances(truth, predicted)
    for step, threshold in enumerate(THRESHOLDS):
        tp, fp, fn = reference_scores(truth, predicted, threshold)
        row = counts.per_threshold()[f"{threshold:.2f}"]
        assert (row["tp"], row["fp"], row["fn"]) == (tp, fp, fn), (threshold, seed)
        assert counts.matches[step] == tp


def test_membrane_objects_give_evaluates_rand_error() -> None:
    """One definition of the cells: the Rand error and V_info of the membrane rule's objects (nothing
    dropped) against the true cells are evaluate's, on imperfect predictions."""
    rng = np.random.default_rng(0)
    names = ["membrane", "cell"]
    for index in range(4):
        _, truth = synthetic_pair(5, index, 96)
        predicted = truth.copy()
        flips = rng.random(truth.shape) < 0.03
        predicted[flips] = 1 - predicted[flips]
        objects = make_instances(predicted, InstanceRule("membrane", min_size=0))
        scores = image_scores(predicted, truth, names)
        table = contingency(true_objects(truth, None), objects)
        assert adapted_rand_error(table) == pytest.approx(scores["rand_error"], abs=1e-12)
        assert information_score(table) == pytest.approx(scores["v_info"], abs=1e-12)


def test_the_board_pools_object_matches_over_images() -> None:
    truth = two_touching_discs()
    board = ScoreBoard(["background", "nucleus"], objects=True)
    # The two discs as one grown object: IoU about 0.3 with each.
    merged = cv2.dilate((truth > 0).astype(np.uint8), np.ones((21, 21), np.uint8)).astype(np.int32)
    board.add("split", (truth > 0).astype(np.uint8), (truth > 0).astype(np.uint8), (truth, truth))
    board.add("merged", (truth > 0).astype(np.uint8), (truth > 0).astype(np.uint8), (merged, truth))
    summary = board.summary()
    assert summary["ap50"] == pytest.approx(2 / (2 + 1 + 2))  # TP 2; FP 1 and FN 2 from the merged image
    assert summary["count_error"] == pytest.approx(0.5)


def test_every_object_score_has_a_name() -> None:
    """The keys the matching writes are the ones names.py lists (tables, trainer.monitor, sweeps read them)."""
    assert set(InstanceCounts.empty().scores()) == {score.key for score in INSTANCE_SCORES}
    assert [score.key for score in INSTANCE_SCORES if score.lower_is_better] == ["count_error"]


def test_banded_flood_equals_the_whole_image_flood() -> None:
    """The watershed runs band by band (bounded memory); on touching nuclei it gives the whole-image result."""
    tiles = [nuclei_sample(4, index, 128)[1] for index in range(32)]
    offsets = np.cumsum([0] + [int(tile.max()) for tile in tiles])[:-1]
    numbered = [tile + (tile > 0) * offset for tile, offset in zip(tiles, offsets, strict=True)]
    mosaic = np.vstack([np.hstack(numbered[row * 4 : row * 4 + 4]) for row in range(8)])  # 1024 × 512
    classes = boundary_target(mosaic, 2)
    foreground = classes > 0
    _, seeds = cv2.connectedComponents((classes == INTERIOR).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    elevation = (classes == BOUNDARY).astype(np.float32) + 0.01 * np.random.default_rng(0).random(
        classes.shape, np.float32
    )
    banded = flood(elevation, seeds, foreground, rows=100)
    whole = watershed(elevation, seeds, mask=foreground)
    assert np.array_equal(banded, whole)
    assert len(np.unique(whole)) > 300


def test_banded_flood_keeps_tall_objects_whole() -> None:
    """Objects far taller than a band (two touching 1000-px strips, one seed each) stay two objects."""
    mask = np.zeros((1200, 60), bool)
    mask[100:1100, 10:50] = True
    seeds = np.zeros(mask.shape, np.int32)
    seeds[120, 20], seeds[1080, 40] = 1, 2
    elevation = np.zeros(mask.shape, np.float32)
    elevation[:, 30] = 1.0  # a ridge down the middle: strip 1 left of it, strip 2 right
    banded = flood(elevation, seeds, mask, rows=100)
    assert np.array_equal(banded, watershed(elevation, seeds, mask=mask))
    assert set(np.unique(banded)) == {0, 1, 2}


@pytest.mark.parametrize(
    ("command", "overrides", "message"),
    [
        ("predict", ["input=x", "pixel_size=-1"], "pixel_size=-1.0: give the pixel size in µm as a positive number"),
        ("predict", ["input=x", "save=[mask,instance]"], "did you mean instances?"),
        ("predict", ["input=x", "instances.seed_margin=1.5"], "instances.seed_margin=1.5"),
        ("train", ["data.target=boundary"], "data.target=boundary trains three classes"),
        ("train", ["model.num_classes=3", "data.class_names=[a,b,c]", "trainer.monitor=ap50"], "scores objects"),
        ("train", ["trainer.object_scores=false", "trainer.monitor=ap50"], "set trainer.object_scores=true"),
    ],
)
def test_object_settings_are_checked_before_anything_runs(command: str, overrides: list[str], message: str) -> None:
    register_resolvers()
    register_schemas()
    with pytest.raises(UserError, match=re.escape(message)):
        preflight(command, overrides, multirun=False)
