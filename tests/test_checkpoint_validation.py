"""load_checkpoint validates before it trusts: every edited, damaged or absurd checkpoint is a one-line UserError
that names the file and what is wrong, and a spec claiming a huge network is refused before it is built.

Each test starts from a real checkpoint (a tiny network), edits a copy of its dict and saves that with torch.save.
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import unetseg.model.checkpoint as checkpoint_module
from unetseg.config import ModelSpec
from unetseg.data.normalize import PercentileNormalizer
from unetseg.model import build_network
from unetseg.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from unetseg.model.spec import spec_problem
from unetseg.runtime.errors import UserError

SPEC = ModelSpec("bilinear", 1, 1, 4, 2)


def good_checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    return Checkpoint(
        build_network(SPEC).state_dict(),
        SPEC,
        PercentileNormalizer(1, 99),
        ["bg", "fg"],
        0.4,
        3,
        {"dice": 0.5, "object_f1": math.nan},  # NaN: a score that was undefined, allowed
        training_state={"torch_rng": torch.get_rng_state()},
    )


@pytest.fixture
def raw() -> dict[str, Any]:
    """The dict a good checkpoint is saved as, for the test to edit."""
    return good_checkpoint().to_dict()


def write(tmp_path: Path, raw: dict[str, Any], name: str = "edited.pt") -> Path:
    path = tmp_path / name
    torch.save(raw, path)
    return path


def refused(path: Path, *fragments: str) -> str:
    """load_checkpoint's one-line UserError, which names the file and holds every fragment."""
    with pytest.raises(UserError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_valid_checkpoint_loads_and_builds(tmp_path: Path) -> None:
    save_checkpoint(good_checkpoint(), tmp_path / "best.pt")
    loaded = load_checkpoint(tmp_path / "best.pt")
    assert loaded.model == SPEC and loaded.class_names == ["bg", "fg"] and loaded.threshold == 0.4
    assert loaded.epoch == 3 and math.isnan(loaded.metrics["object_f1"]) and loaded.training_state is not None
    network = loaded.build_network()
    for key, tensor in network.state_dict().items():
        assert torch.equal(tensor, good_checkpoint().state_dict[key]), key
    assert network(torch.rand(1, 1, 12, 20)).shape == (1, 1, 12, 20)


def test_a_checkpoint_from_before_instance_targets_still_loads(tmp_path: Path, raw: dict[str, Any]) -> None:
    for key in ("target", "boundary_width", "training_state"):
        del raw[key]
    loaded = load_checkpoint(write(tmp_path, raw))
    assert loaded.target == "mask" and loaded.boundary_width == 2 and loaded.training_state is None


def test_a_boundary_checkpoint_loads(tmp_path: Path) -> None:
    spec = ModelSpec("transposed", 3, 3, 2, 3)
    checkpoint = Checkpoint(
        build_network(spec).state_dict(), spec, PercentileNormalizer(0.5, 99.5), ["bg", "in", "edge"], 0.5, 0, {}
    )
    checkpoint.target, checkpoint.boundary_width = "boundary", 3
    save_checkpoint(checkpoint, tmp_path / "best.pt")
    loaded = load_checkpoint(tmp_path / "best.pt")
    assert loaded.target == "boundary" and loaded.boundary_width == 3 and loaded.model == spec


# --- top level ---------------------------------------------------------------------------------------------


def test_a_missing_top_level_key(tmp_path: Path, raw: dict[str, Any]) -> None:
    del raw["threshold"]
    refused(write(tmp_path, raw), "damaged or edited", "it has no threshold", "written by unetseg train")


def test_an_unknown_top_level_key(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["optimizer"] = {}
    refused(write(tmp_path, raw), "unknown key 'optimizer'")


def test_a_top_level_value_of_the_wrong_type(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["class_names"] = "bg,fg"
    refused(write(tmp_path, raw, "names.pt"), "class_names is str, not a list of names")
    raw = good_checkpoint().to_dict()
    raw["epoch"] = 3.0
    refused(write(tmp_path, raw, "epoch.pt"), "epoch is float, not an integer")
    raw = good_checkpoint().to_dict()
    raw["training_state"] = [1, 2]
    refused(write(tmp_path, raw, "state.pt"), "training_state is list, not a dict or None")


# --- the model spec -----------------------------------------------------------------------------------------


def test_an_extra_field_in_the_model_spec(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["model"]["dropout"] = 0.1
    refused(write(tmp_path, raw), "describes a network this unetseg cannot build", "unknown field 'dropout'", "retrain")


def test_a_missing_field_in_the_model_spec(tmp_path: Path, raw: dict[str, Any]) -> None:
    del raw["model"]["depth"]
    refused(write(tmp_path, raw), "model has no depth")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("4", "model.depth='4' is str, not an integer"), (2.0, "model.depth=2.0 is float"), (True, "depth=True is bool")],
)
def test_a_model_spec_value_of_the_wrong_type(
    tmp_path: Path, raw: dict[str, Any], value: object, fragment: str
) -> None:
    raw["model"]["depth"] = value
    refused(write(tmp_path, raw), "cannot build", fragment)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("depth", 9, "model.depth=9: must be between 1 and 8"),
        ("in_channels", 2, "model.in_channels=2: must be 1 or 3"),
        ("num_classes", 0, "model.num_classes=0: must be at least 1"),
        ("base_channels", -4, "model.base_channels=-4: must be at least 1"),
        ("upsampling", "nearest", "model.upsampling='nearest': not one of bilinear, transposed"),
    ],
)
def test_a_model_spec_value_out_of_range(
    tmp_path: Path, raw: dict[str, Any], key: str, value: object, fragment: str
) -> None:
    raw["model"][key] = value
    refused(write(tmp_path, raw), "cannot build", fragment)


def test_a_huge_model_spec_is_refused_fast_without_building_it(
    tmp_path: Path, raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw["model"]["base_channels"] = 100_000
    path = write(tmp_path, raw)
    devices: list[torch.device] = []

    def recording(spec: ModelSpec) -> torch.nn.Module:
        devices.append(torch.empty(0).device)  # where a tensor made now would live
        return build_network(spec)

    monkeypatch.setattr(checkpoint_module, "build_network", recording)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    message = refused(path, "cannot build", "base_channels=100000", "at most 4096")
    assert time.perf_counter() - start < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200 * 1024
    assert devices == [], devices  # refused from the spec alone: nothing built
    assert "retrain it" in message


def test_a_spec_too_large_even_to_describe_is_one_line(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["model"]["base_channels"] = 10**30  # more channels than an int64 holds
    refused(write(tmp_path, raw), "cannot build", "the widest layer would have")


def test_every_spec_the_rule_allows_is_under_a_billion_parameters() -> None:
    # The largest network each depth allows (widest layer 4096 channels, colour in, 255 classes out): the
    # widest-layer rule is the parameter bound (4 GB of fp32 weights at most), checked before anything is built.
    for depth in range(1, 9):
        for upsampling in ("bilinear", "transposed"):
            spec = ModelSpec(upsampling, 3, 255, 4096 // 2 ** (depth - 1), depth)
            assert spec_problem(spec) is None
            with torch.device("meta"):
                network = build_network(spec)
            assert sum(p.numel() for p in network.parameters()) < 1_000_000_000, spec


# --- the state_dict -----------------------------------------------------------------------------------------


def test_a_tensor_of_edited_shape(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["state_dict"]["outc.weight"] = torch.zeros(2, 4, 1, 1)
    refused(
        write(tmp_path, raw),
        "damaged or edited",
        "state_dict['outc.weight'] has shape [2, 4, 1, 1], the model spec needs [1, 4, 1, 1]",
    )


def test_weights_of_another_spec(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["state_dict"] = build_network(ModelSpec("bilinear", 1, 1, 8, 2)).state_dict()
    refused(
        write(tmp_path, raw), "state_dict['inc.0.weight'] has shape [8, 1, 3, 3], the model spec needs [4, 1, 3, 3]"
    )


def test_a_missing_state_dict_key(tmp_path: Path, raw: dict[str, Any]) -> None:
    del raw["state_dict"]["outc.bias"]
    refused(write(tmp_path, raw), "does not fit the model spec: it lacks 'outc.bias'")


def test_an_extra_state_dict_key(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["state_dict"]["head.weight"] = torch.zeros(1)
    refused(write(tmp_path, raw), "does not fit the model spec: it has an unexpected 'head.weight'")


def test_a_renamed_state_dict_key_names_both(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["state_dict"]["module.outc.bias"] = raw["state_dict"].pop("outc.bias")
    refused(write(tmp_path, raw), "it lacks 'outc.bias' and has an unexpected 'module.outc.bias'")


def test_a_non_tensor_in_the_state_dict(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["state_dict"]["outc.bias"] = [0.0]
    refused(write(tmp_path, raw), "state_dict['outc.bias'] is list, not a dense tensor")


def test_an_integer_tensor_where_weights_belong(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["state_dict"]["outc.bias"] = torch.zeros(1, dtype=torch.int64)
    refused(write(tmp_path, raw), "state_dict['outc.bias'] is torch.int64, not a floating tensor")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_weight(tmp_path: Path, raw: dict[str, Any], bad: float) -> None:
    raw["state_dict"]["inc.0.weight"][0, 0, 1, 1] = bad
    refused(write(tmp_path, raw), "state_dict['inc.0.weight'] holds NaN or infinite values")


def test_a_non_finite_batchnorm_statistic(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["state_dict"]["inc.1.running_var"][2] = math.nan
    refused(write(tmp_path, raw), "state_dict['inc.1.running_var'] holds NaN")


# --- class names, threshold, epoch and the rest -------------------------------------------------------------


def test_duplicate_class_names(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["class_names"] = ["bg", "bg"]
    refused(write(tmp_path, raw), "class name 'bg' appears twice")


@pytest.mark.parametrize("bad", ["", "  ", 3])
def test_an_empty_or_non_string_class_name(tmp_path: Path, raw: dict[str, Any], bad: object) -> None:
    raw["class_names"] = ["bg", bad]
    refused(write(tmp_path, raw), f"class name {bad!r} is not a non-empty string")


@pytest.mark.parametrize(
    ("num_classes", "names", "fragment"),
    [
        (1, ["bg", "fg", "x"], "it has 3 class names but model.num_classes=1 needs 2"),
        (1, ["fg"], "it has 1 class names but model.num_classes=1 needs 2"),
        (3, ["bg", "fg"], "it has 2 class names but model.num_classes=3 needs 3"),
    ],
)
def test_a_class_count_that_does_not_match(
    tmp_path: Path, raw: dict[str, Any], num_classes: int, names: list[str], fragment: str
) -> None:
    if num_classes != SPEC.num_classes:  # weights that fit the spec: only the names are wrong
        spec = ModelSpec("bilinear", 1, num_classes, 4, 2)
        raw["model"], raw["state_dict"] = spec.to_dict(), build_network(spec).state_dict()
    raw["class_names"] = names
    refused(write(tmp_path, raw), fragment)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0, 1.0, 1.5, -0.2])
def test_a_threshold_out_of_range(tmp_path: Path, raw: dict[str, Any], bad: float) -> None:
    raw["threshold"] = bad
    refused(write(tmp_path, raw), f"threshold={bad}: must be strictly between 0 and 1")


def test_a_negative_epoch(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["epoch"] = -1
    refused(write(tmp_path, raw), "epoch=-1: must be >= 0")


def test_a_non_numeric_metric(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["metrics"]["dice"] = "0.5"
    refused(write(tmp_path, raw), "metrics['dice'] is str, not a number")


@pytest.mark.parametrize(
    ("normalization", "fragment"),
    [
        ({"method": "zscore", "low": 1, "high": 99}, "normalization method 'zscore' is unknown"),
        ({"method": "percentile", "low": 1}, "normalization has keys ['low', 'method']"),
        ({"method": "percentile", "low": 99, "high": 1}, "normalization percentiles (99, 1)"),
        ({"method": "percentile", "low": math.nan, "high": 99}, "normalization percentiles (nan, 99)"),
        ({"method": "percentile", "low": 1, "high": 101.0}, "need 0 <= low < high <= 100"),
    ],
)
def test_a_bad_normalization(tmp_path: Path, raw: dict[str, Any], normalization: dict, fragment: str) -> None:
    raw["normalization"] = normalization
    refused(write(tmp_path, raw), fragment)


def test_a_bad_target_or_boundary_width(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["target"] = "edges"
    refused(write(tmp_path, raw, "target.pt"), "unknown training target 'edges'")
    raw = good_checkpoint().to_dict()
    raw["target"] = "boundary"
    refused(write(tmp_path, raw, "boundary.pt"), "claims a boundary target but has 2 classes")
    raw = good_checkpoint().to_dict()
    raw["boundary_width"] = 0
    refused(write(tmp_path, raw, "width.pt"), "boundary_width=0: must be at least 1 pixel")
