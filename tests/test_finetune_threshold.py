"""trainer.threshold=auto (the threshold chosen on the validation images after training), trainer.init_from
(fine-tuning from another run's weights) and data=isbi's default folder, data/train."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FP32, TINY, assert_one_line_error, run_cli, write_dataset
from unetseg.config import ModelSpec
from unetseg.data.dataset import load_pairs
from unetseg.data.labels import LabelRule
from unetseg.data.pairing import ISBI_DEFAULT_ROOT, with_default_root
from unetseg.model import build_network
from unetseg.model.checkpoint import load_checkpoint
from unetseg.model.transfer import load_transferable, shape_difference
from unetseg.training.calibration import GRID, TIE, ThresholdSweep, calibrate, choose_threshold
from unetseg.training.fingerprint import initialised_from, with_initialisation

NAMES = ["background", "foreground"]


# --- the chooser, on probability maps whose optimum is known ------------------------------------------------


def sweep_of(*images: tuple[np.ndarray, np.ndarray]) -> dict[float, dict[str, float]]:
    """The grid's scores over (probabilities (H, W), label (H, W)) pairs."""
    sweep = ThresholdSweep(NAMES)
    for index, (probabilities, label) in enumerate(images):
        sweep.add(str(index), torch.from_numpy(probabilities.astype(np.float32))[None, None], label.astype(np.uint8))
    return sweep.scores()


def test_the_chosen_threshold_is_the_known_optimum() -> None:
    # Foreground pixels at 0.33 and up, background at 0.28 and below but for one at 0.53: only thresholds in
    # (0.28, 0.33] find every foreground pixel with one false one, Dice 10/11; of the grid, 0.30 alone.
    probabilities = np.array([[0.33, 0.43, 0.63, 0.83, 0.93], [0.03, 0.13, 0.23, 0.28, 0.53]])
    label = np.array([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    choice = choose_threshold(sweep_of((probabilities, label)), "dice_foreground", images=1)
    assert choice.chosen == 0.3 and choice.by == "dice_foreground"
    assert choice.score == pytest.approx(10 / 11)
    assert choice.score_at_provisional == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # at 0.5: 3 found, 2 missed, 1 false
    assert (choice.pixel_error_optimum, choice.pixel_error) == (0.3, pytest.approx(1 / 10))
    assert [row["threshold"] for row in choice.grid] == list(GRID)
    # where lower is better, the lowest wins
    assert choose_threshold(sweep_of((probabilities, label)), "pixel_error", images=1).chosen == 0.3


def test_the_choice_pools_the_images_and_reports_the_pixel_error_optimum_beside_it() -> None:
    """Against a brute-force count over two random images: Dice of the foreground pooled over both images
    (as validation pools it), and the pixel error; the two optima need not agree."""
    rng = np.random.default_rng(3)
    images = []
    for _ in range(2):
        label = (rng.random((24, 24)) < 0.3).astype(np.uint8)
        probabilities = np.clip(0.45 * label + 0.35 * rng.random((24, 24)) + 0.1 * rng.random((24, 24)), 0, 1)
        images.append((probabilities, label))
    choice = choose_threshold(sweep_of(*images), "dice_foreground", images=2)
    p = np.concatenate([image[0].ravel() for image in images]).astype(np.float32)
    y = np.concatenate([image[1].ravel() for image in images]).astype(bool)
    dice, errors = {}, {}
    for threshold in GRID:
        found = p >= np.float32(threshold)
        dice[threshold] = 2 * (found & y).sum() / (found.sum() + y.sum())
        errors[threshold] = (found != y).mean()
    best = max(dice.values())
    tied = [t for t in GRID if dice[t] >= best - TIE]  # within TIE of the best Dice: the lowest pixel error
    assert choice.chosen == min(tied, key=lambda t: (errors[t], abs(t - 0.5), t))
    assert choice.score == pytest.approx(dice[choice.chosen])
    assert choice.pixel_error_optimum == min(GRID, key=lambda t: (errors[t], abs(t - 0.5)))
    assert choice.pixel_error == pytest.approx(errors[choice.pixel_error_optimum])
    assert choice.images == 2


def test_a_near_tie_in_the_monitored_score_goes_to_the_lower_pixel_error() -> None:
    # a 32-wide run's validation scores on ISBI slices 18-19 (membrane Dice, pixel error)
    measured = {0.25: (0.82077, 0.07536), 0.3: (0.82552, 0.07556), 0.35: (0.82604, 0.07708), 0.4: (0.82428, 0.07939)}
    scores = {t: {"dice_membrane": dice, "pixel_error": error} for t, (dice, error) in measured.items()}
    choice = choose_threshold(scores, "dice_membrane", images=2)
    assert choice.chosen == 0.3  # 0.0005 below the best Dice (0.35), 0.0015 lower pixel error; 0.25 is not a tie
    assert choice.pixel_error_optimum == 0.25 and choice.by == "dice_membrane"
    scores[0.3]["dice_membrane"] = 0.82604 - 2 * TIE
    assert choose_threshold(scores, "dice_membrane", images=2).chosen == 0.35  # no longer a tie


def test_the_pixel_counts_of_every_threshold_in_one_pass_equal_the_decision_rule_per_threshold() -> None:
    """The pixel scores come from one histogram per image; the score boards (used for region and object
    monitors) apply classes_from_probabilities at each threshold. Pixels exactly at a threshold included."""
    rng = np.random.default_rng(5)
    label = (rng.random((40, 40)) < 0.4).astype(np.uint8)
    probabilities = rng.choice(np.array([*GRID, 0.0, 1.0, 0.333], np.float32), size=(40, 40))
    fast, boards = ThresholdSweep(NAMES), ThresholdSweep(NAMES, regions=True)
    for sweep in (fast, boards):
        sweep.add("a", torch.from_numpy(probabilities)[None, None], label)
    for threshold in GRID:
        assert torch.equal(fast.confusions[threshold].counts, boards.boards[threshold].confusion.counts)
        pixel_scores = fast.scores()[threshold]
        assert pixel_scores.items() <= boards.scores()[threshold].items()


def test_a_monitor_the_threshold_does_not_change_chooses_by_pixel_error_and_ties_go_to_the_nearest_to_half() -> None:
    probabilities = np.array([[0.05, 0.1, 0.9, 0.95]])
    label = np.array([[0, 0, 1, 1]])
    choice = choose_threshold(sweep_of((probabilities, label)), "val_loss", images=1)
    assert choice.by == "pixel_error" and choice.score == 0
    assert choice.chosen == 0.5  # every threshold from 0.15 to 0.9 is perfect: the one nearest 0.5


def test_calibrate_scores_only_the_images_it_is_given() -> None:
    """The trainer gives calibrate its validation split; a network whose output is the image itself makes
    the probabilities known, so the choice follows from those images alone."""
    from unetseg.data.dataset import LabelledImages

    class Identity(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.logit(x.clamp(1e-6, 1 - 1e-6))

    probabilities = np.array([[0.33, 0.43, 0.63, 0.83, 0.93], [0.03, 0.13, 0.23, 0.28, 0.53]], np.float32)
    label = np.array([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.uint8)
    validation = LabelledImages([probabilities[None]], [label], ["v"])
    choice = calibrate(Identity(), validation, NAMES, FP32, "dice_foreground")
    assert (choice.chosen, choice.images) == (0.3, 1)


# --- fine-tuning: shapes and the output layer ---------------------------------------------------------------


def test_another_class_count_reinitialises_only_the_output_layer() -> None:
    torch.manual_seed(0)
    source = build_network(ModelSpec("bilinear", 1, 1, 4, 2)).state_dict()
    torch.manual_seed(1)
    target = build_network(ModelSpec("bilinear", 1, 3, 4, 2))
    fresh = {key: value.clone() for key, value in target.state_dict().items()}
    assert load_transferable(target, source) == ["outc.weight", "outc.bias"]
    for key, value in target.state_dict().items():
        expected = fresh[key] if key.startswith("outc.") else source[key]
        assert torch.equal(value, expected), key
    assert target.outc.weight.shape[0] == 3


def test_a_shape_difference_names_both_sides_and_the_fix() -> None:
    there, here, fix = shape_difference(ModelSpec("bilinear", 1, 1, 16, 4), ModelSpec("bilinear", 1, 2, 32, 4)) or ()
    assert (there, here, fix) == ("base_channels 16", "base_channels 32", "model.base_channels=16")
    assert shape_difference(ModelSpec("bilinear", 1, 1, 16, 4), ModelSpec("bilinear", 1, 3, 16, 4)) is None


def test_a_resumed_fine_tuning_run_keeps_what_it_started_from() -> None:
    stored = {"config": {"trainer.init_from": "runs/a", "optim.lr": "0.1"}, "data": "d"}
    current = {"config": {"trainer.init_from": "None", "optim.lr": "0.1"}, "data": "d"}
    assert initialised_from(stored) == "runs/a" and initialised_from(current) is None
    assert with_initialisation(current, stored)["config"]["trainer.init_from"] == "runs/a"
    assert with_initialisation(current, {"config": {}, "data": "d"}) == current  # a checkpoint from before init_from


# --- the ISBI default folder (in-process) -------------------------------------------------------------------


def test_the_default_root_is_data_train_when_it_holds_a_folder_pair(tmp_path: Path) -> None:
    from unetseg.config import DataConfig, DataSource
    from unetseg.runtime.errors import UserError

    data = DataConfig(source=DataSource.folder, root=None)
    with pytest.raises(UserError, match=r"data.root is not set.*data/train.*image/\+label/.*imgs/\+masks/"):
        with_default_root(data, tmp_path)
    (tmp_path / ISBI_DEFAULT_ROOT / "image").mkdir(parents=True)
    with pytest.raises(UserError, match="has none of them"):
        with_default_root(data, tmp_path)
    (tmp_path / ISBI_DEFAULT_ROOT / "label").mkdir()
    found, default = with_default_root(data, tmp_path)
    assert default and found.root == str(tmp_path / "data" / "train")
    given = DataConfig(source=DataSource.folder, root="elsewhere")
    assert with_default_root(given, tmp_path) == (given, False)


# --- end to end ---------------------------------------------------------------------------------------------


FOLDERS = ["data=folder", "data.root=train", "data.val_root=val"]


def one_run(cwd: Path, name: str) -> Path:
    return cwd / "outputs" / name


def train(cwd: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("train", *TINY, f"hydra.run.dir=outputs/{name}", *extra, cwd=cwd)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training folder, a separate validation folder, and a tiny run trained on them (the source of the
    fine-tuning tests), with a normalisation other than the default so that the fine-tuning runs show whose
    they take."""
    cwd = tmp_path_factory.mktemp("finetune")
    write_dataset(cwd / "train", count=4, size=32)
    write_dataset(cwd / "val", count=2, size=32, seed=1)
    result = train(cwd, "source", *FOLDERS, "data.normalization.low_percentile=2")
    assert result.returncode == 0, result.stderr
    return cwd


@pytest.mark.slow
def test_auto_threshold_is_chosen_on_validation_stored_in_best_pt_and_used_by_predict(folders: Path) -> None:
    cwd = folders
    settings = [*FOLDERS, "trainer.precision=fp32", "trainer.channels_last=false"]
    result = train(cwd, "auto", *settings, "trainer.threshold=auto")
    assert result.returncode == 0, result.stderr
    assert "threshold: auto (validation at 0.5" in result.stdout
    run = one_run(cwd, "auto")
    recorded = json.loads((run / "metrics.json").read_text())["threshold"]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best.threshold == recorded["chosen"] and recorded["chosen"] in GRID
    assert recorded["by"] == "dice" and recorded["images"] == 2 and recorded["split"] == "validation"
    assert load_checkpoint(run / "checkpoints" / "last.pt").threshold == 0.5  # what validation used
    line = next(line for line in result.stdout.splitlines() if line.startswith("threshold: "))
    assert f"threshold: {recorded['chosen']:g} chosen on the 2 validation image(s) by dice" in line
    assert "lowest pixel error is at" in line

    # The recorded grid is what best.pt's network scores on the validation folder alone.
    rule = LabelRule(1, "auto", "mask", 2)
    validation = load_pairs(cwd / "val" / "image", cwd / "val" / "label", 1, rule, best.normalization, None)
    again = calibrate(best.build_network(), validation, NAMES, FP32, "dice")
    assert again.chosen == recorded["chosen"]
    for ours, theirs in zip(again.grid, recorded["grid"], strict=True):
        assert ours["dice"] == pytest.approx(theirs["dice"], abs=1e-4)

    predicted = run_cli(
        "predict", "input=val/image", f"checkpoint={run / 'checkpoints' / 'best.pt'}", "output=masks", cwd=cwd
    )
    assert predicted.returncode == 0, predicted.stderr
    assert f"threshold {best.threshold}" in predicted.stdout


@pytest.mark.slow
def test_auto_threshold_needs_a_binary_network(tmp_path: Path) -> None:
    result = run_cli(
        "train", *TINY, "trainer.threshold=auto", "model.num_classes=3", "data.class_names=[a,b,c]", cwd=tmp_path
    )
    assert_one_line_error(result, "trainer.threshold=auto", "model.num_classes=3", "most probable class")
    assert_one_line_error(run_cli("train", *TINY, "trainer.threshold=high", cwd=tmp_path), "trainer.threshold=high")


@pytest.mark.slow
def test_init_from_a_network_of_another_shape_is_one_line_naming_both(folders: Path) -> None:
    result = train(folders, "wider", *FOLDERS, "trainer.init_from=outputs/source", "model.base_channels=8")
    assert_one_line_error(
        result, "trainer.init_from=", "has base_channels 4; this run has base_channels 8", "model.base_channels=4"
    )
    assert not one_run(folders, "wider").exists()
    both = run_cli("train", *TINY, "trainer.init_from=a.pt", "trainer.resume=b.pt", cwd=folders)
    assert_one_line_error(both, "trainer.init_from=a.pt and trainer.resume=b.pt cannot be combined")


@pytest.mark.slow
def test_init_from_with_another_class_count_starts_from_the_source_weights(folders: Path) -> None:
    source = load_checkpoint(folders / "outputs" / "source" / "checkpoints" / "best.pt")
    result = train(
        folders,
        "three",
        *FOLDERS,
        "trainer.init_from=outputs/source",
        "model.num_classes=2",
        "optim.lr=1e-12",  # the weights barely move: best.pt shows where training started
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"initialised from \S+source/checkpoints/best\.pt \(its normalisation", result.stdout)
    assert "output layer (outc.weight, outc.bias) re-initialised for 2 classes" in result.stdout
    tuned = load_checkpoint(one_run(folders, "three") / "checkpoints" / "best.pt")
    parameters = {name for name, _ in build_network(tuned.model).named_parameters()}
    for name in parameters:
        if name.startswith("outc."):
            assert tuned.state_dict[name].shape[0] == 2
        else:
            assert torch.allclose(tuned.state_dict[name], source.state_dict[name], atol=1e-6), name
    assert tuned.normalization == source.normalization  # the source's, not the config's
    assert source.normalization.low_percentile == 2


@pytest.mark.slow
def test_a_fine_tuning_run_resumes_by_its_path_and_not_by_auto(folders: Path) -> None:
    first = train(folders, "tuned", *FOLDERS, "trainer.init_from=outputs/source")
    assert first.returncode == 0, first.stderr
    # No trainer.init_from (it cannot go with resume) and no normalisation given: last.pt brings both.
    resumed = train(folders, "tuned", *FOLDERS, "trainer.epochs=2", "trainer.resume=outputs/tuned")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    last = load_checkpoint(one_run(folders, "tuned") / "checkpoints" / "last.pt")
    assert last.epoch == 2 and last.normalization.low_percentile == 2
    assert last.training_state is not None
    assert initialised_from(last.training_state["fingerprint"]) == "outputs/source"
    auto = run_cli("train", *TINY, *FOLDERS, "trainer.epochs=3", "trainer.resume=auto", cwd=folders)
    assert_one_line_error(auto, "trainer.resume=auto", "fine-tuned from trainer.init_from=outputs/source")


@pytest.mark.slow
def test_isbi_without_a_root_trains_on_data_train_of_the_launch_folder(tmp_path: Path) -> None:
    missing = run_cli("train", "data=isbi", *TINY, cwd=tmp_path)
    assert_one_line_error(missing, "data.root is not set", "data/train", "image/+label/")
    write_dataset(tmp_path / "data" / "train", count=3, size=32)
    (tmp_path / "data" / "test").mkdir()
    result = run_cli("train", "data=isbi", *TINY, "hydra.run.dir=outputs/isbi", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"data.root not given: {tmp_path / 'data' / 'train'}" in result.stdout
    summary = json.loads((tmp_path / "outputs" / "isbi" / "metrics.json").read_text())
    assert summary["data"]["train_images"] + summary["data"]["val_images"] == 3
    assert math.isfinite(summary["best"]["val_loss"])
