"""Hostile config values: each is one line naming the key and the fix, found before Hydra makes any folder.

Most cases go through the runner's preflight in-process (what the CLI runs first); a few end-to-end runs check
the messages for paths Hydra's override grammar cannot read unquoted, as a shell user would see them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import shlex
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import assert_one_line_error, run_cli, trained_checkpoint
from unetseg.checks import CHECKS, MAX_SEED, SYNTHETIC_SIZES
from unetseg.config import register_schemas, to_typed
from unetseg.model.checkpoint import find_checkpoint, save_checkpoint
from unetseg.overrides import hydra_quoted, quoting_advice
from unetseg.runner import preflight
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import config_dir, register_resolvers


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test in its own folder (user paths resolve against it), with the schemas registered."""
    monkeypatch.chdir(tmp_path)
    register_resolvers()
    register_schemas()


def refused(command: str, *overrides: str, multirun: bool = False) -> str:
    """The one-line message preflight refuses ``overrides`` with."""
    with pytest.raises(UserError) as caught:
        preflight(command, list(overrides), multirun)
    message = str(caught.value)
    assert "\n" not in message
    return message


def assert_refused(command: str, overrides: list[str], *fragments: str) -> None:
    message = refused(command, *overrides)
    for fragment in fragments:
        assert fragment in message, message


# 1. nan and inf, anywhere


@pytest.mark.parametrize(
    ("command", "overrides", "shown"),
    [
        ("train", ["optim.lr=inf"], "optim.lr=inf"),
        ("train", ["optim.lr=nan"], "optim.lr=nan"),
        ("train", ["trainer.threshold=nan"], "trainer.threshold=nan"),
        ("train", ["optim.weight_decay=inf"], "optim.weight_decay=inf"),
        ("train", ["schedule.min_lr=-inf"], "schedule.min_lr=-inf"),
        ("train", ["data.augment.intensity.noise_std=inf"], "data.augment.intensity.noise_std=inf"),
        ("train", ["optim.betas=[0.9,inf]"], "optim.betas=[0.9, inf]"),
        ("predict", ["input=x", "overlap=nan"], "overlap=nan"),
        ("predict", ["input=x", "instances.seed_margin=-inf"], "instances.seed_margin=-inf"),
        ("evaluate", ["checkpoint=x", "data.root=d", "data.val_fraction=inf"], "data.val_fraction=inf"),
    ],
)
def test_non_finite_values_are_refused(command: str, overrides: list[str], shown: str) -> None:
    assert_refused(command, overrides, f"{shown}: must be a finite number", f"unetseg {command} --cfg job")


def _float_keys(node: object, prefix: str = "") -> list[str]:
    keys = []
    for spec in dataclasses.fields(node):  # type: ignore[arg-type]
        value = getattr(node, spec.name)
        if dataclasses.is_dataclass(value):
            keys += _float_keys(value, f"{prefix}{spec.name}.")
        elif isinstance(value, float):
            keys.append(f"{prefix}{spec.name}")
    return keys


@pytest.mark.parametrize(
    ("command", "overrides"),
    [("train", []), ("predict", ["input=x", "threshold=0.5", "pixel_size=0.3"]), ("evaluate", ["data.root=d"])],
)
def test_every_float_of_every_config_is_checked(command: str, overrides: list[str]) -> None:
    """The check walks the typed config: no float field can be left out of it."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        typed = to_typed(compose(command, overrides=overrides))
    keys = _float_keys(typed)
    assert len(keys) >= (25 if command == "train" else 4)
    for key in keys:
        broken = copy.deepcopy(typed)
        *parents, leaf = key.split(".")
        node = broken
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, math.inf)
        with pytest.raises(UserError, match=re.escape(f"{key}=inf: must be a finite number")):
            CHECKS[command](broken)


# 2. devices


@pytest.mark.parametrize("device", ["cuda:foo", "banana", "cpu:0", "cuda:", "CUDA"])
def test_device_names(device: str) -> None:
    assert_refused("train", [f"trainer.device={device}"], f"trainer.device={device}: not a device name", "cuda:N")
    assert_refused("predict", ["input=x", f"device={device}"], f"device={device}: not a device name")


def test_devices_not_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_refused("train", ["trainer.device=cuda:7"], "trainer.device=cuda:7: CUDA is not available", "auto or cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert_refused("train", ["trainer.device=cuda:7"], "trainer.device=cuda:7: this machine has 2 CUDA device(s)")
    assert_refused("predict", ["input=x", "device=cuda:2"], "device=cuda:2", "cuda:0 to cuda:1")
    preflight("train", ["trainer.device=cuda:1"], False)
    # A sweep's jobs may run on other machines (hydra/launcher=slurm): each job checks its own device.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    preflight("train", ["trainer.device=cuda:0", "optim.lr=1e-3,1e-4"], True)


def test_torchrun_ranks_use_their_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    preflight("train", ["trainer.device=cuda:3"], False)  # each rank takes cuda:LOCAL_RANK, whatever is named


# 3.-5. seeds, synthetic data, class names


@pytest.mark.parametrize(
    ("command", "override"),
    [
        ("train", "trainer.seed=-1"),
        ("train", f"trainer.seed={MAX_SEED + 1}"),
        ("train", "data.synthetic.seed=-1"),
        ("evaluate", "data.synthetic.seed=-5"),
        ("synthesize", "seed=-1"),
    ],
)
def test_seeds_outside_numpys_range(command: str, override: str) -> None:
    extra = {"evaluate": ["data=synthetic"], "synthesize": ["output=x"]}.get(command, [])
    assert_refused(command, [*extra, override], f"{override}: a seed must be between 0 and {MAX_SEED}")


def test_the_largest_seed_is_fine() -> None:
    preflight("train", [f"trainer.seed={MAX_SEED}", f"data.synthetic.seed={MAX_SEED}"], False)


def test_synthetic_sizes_share_one_bound() -> None:
    low, high = SYNTHETIC_SIZES
    bound = f"must be between {low} and {high} pixels"
    assert_refused("train", ["data.synthetic.size=40000"], "data.synthetic.size=40000", bound)
    assert_refused("train", ["data.synthetic.size=8"], "data.synthetic.size=8", bound)
    assert_refused("evaluate", ["data=synthetic", "data.synthetic.size=40000"], "data.synthetic.size=40000", bound)
    assert_refused("synthesize", ["output=x", "size=40000"], "size=40000", bound)


def test_synthetic_image_counts() -> None:
    assert_refused("train", ["data.synthetic.num_images=1"], "data.synthetic.num_images=1", "at least 2")
    assert_refused(
        "train",
        ["data.synthetic.num_images=100000000"],
        "data.synthetic.num_images=100000000 images of 128² pixels",
        "e.g. data.synthetic.num_images=16384",
    )


@pytest.mark.parametrize(
    ("names", "fragments"),
    [
        ("[a,a]", ["data.class_names=['a', 'a']", "a named more than once"]),
        ("[cell,membrane,cell]", ["cell named more than once"]),
        ('[a,""]', ["class 1 has an empty name"]),
        ('[" ",b]', ["class 0 has an empty name"]),
    ],
)
def test_class_names_each_once_and_not_empty(names: str, fragments: list[str]) -> None:
    count = names.count(",") + 1
    assert_refused("train", [f"data.class_names={names}", f"model.num_classes={count}"], *fragments)


# 6. deleting keys, null groups


@pytest.mark.parametrize(
    ("command", "overrides", "fragments"),
    [
        ("train", ["~optim.lr"], ["~optim.lr: optim.lr is required and cannot be deleted", "optim.lr=VALUE"]),
        ("train", ["~trainer.workers"], ["trainer.workers=VALUE, or trainer.workers=null"]),
        ("train", ["~runs_root"], ["runs_root is required"]),
        ("train", ["~optim"], ["the optim group is required", "optim=adam, optim=rmsprop, optim=sgd"]),
        ("train", ["~optim.lrr"], ["~optim.lrr: no such key to delete", "did you mean optim.lr?"]),
        ("predict", ["input=x", "~threshold"], ["threshold is required", "threshold=null"]),
        ("train", ["model=null"], ["model=null: model is a config group", "model=bilinear, model=transposed"]),
        ("train", ["hydra/launcher=null"], ["hydra/launcher=basic"]),
    ],
)
def test_deleting_required_keys_and_null_groups(command: str, overrides: list[str], fragments: list[str]) -> None:
    assert_refused(command, overrides, *fragments)


def test_deleting_the_optional_experiment_is_fine() -> None:
    preflight("train", ["~experiment"], False)


# 7. checkpoint=RUN_FOLDER


def test_checkpoint_may_name_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    best = tmp_path / "outputs" / "train" / "RUN" / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"")
    assert find_checkpoint("outputs/train/RUN", "elsewhere") == best
    assert "using its checkpoints/best.pt" in capsys.readouterr().out
    assert find_checkpoint("outputs/train/RUN/checkpoints", "elsewhere") == best
    assert find_checkpoint(str(best), "elsewhere") == best
    assert find_checkpoint("missing.pt", "elsewhere") == tmp_path / "missing.pt"  # load_checkpoint says it is missing


def test_checkpoint_folder_without_one(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'empty' / 'checkpoints' / 'best.pt'}")):
        find_checkpoint("empty", "elsewhere")
    last = tmp_path / "last_only" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    with pytest.raises(UserError, match="it has checkpoints/last.pt: give that file"):
        find_checkpoint("last_only", "elsewhere")
    for job in ("0", "1"):
        (tmp_path / "sweep" / job / "checkpoints").mkdir(parents=True)
        (tmp_path / "sweep" / job / "checkpoints" / "best.pt").write_bytes(b"")
    with pytest.raises(
        UserError, match=re.escape(f"holds 2 runs (a sweep?): give one of them, e.g. checkpoint={tmp_path}")
    ):
        find_checkpoint("sweep", "elsewhere")


# 8. values Hydra cannot read unquoted

PATH_CASES = [
    # (override as argv passes it, what Hydra cannot read, the quoted form to type)
    ("input=data/scan (1).png", 'cannot read "(" unquoted', "'input=\"data/scan (1).png\"'"),
    ("input=data/a=b.png", 'cannot read "=" unquoted', "'input=\"data/a=b.png\"'"),
    ("input=data/a,b.png", 'reads "," unquoted as a list', "'input=\"data/a,b.png\"'"),
    ("input=data/${x}.png", 'reads "${" as an interpolation', "'input=\"data/\\${x}.png\"'"),
    ("input=données/é.png", 'cannot read "é" unquoted', "'input=\"données/é.png\"'"),
    ("input=scans/a b)c.tif", 'cannot read ")" unquoted', "'input=\"scans/a b)c.tif\"'"),
    ("checkpoint=run (2)/best.pt", 'cannot read "(" unquoted', "'checkpoint=\"run (2)/best.pt\"'"),
    ("output=out(1)", 'cannot read "(" unquoted', "'output=\"out(1)\"'"),
    ("input=x,y", 'reads "," unquoted as a list', "'input=\"x,y\"'"),
    ("input=it's.png", 'cannot read "\'" unquoted', "'input=\"it'\"'\"'s.png\"'"),
]


@pytest.mark.parametrize(("override", "reason", "quoted"), PATH_CASES)
def test_paths_hydra_cannot_read_unquoted(override: str, reason: str, quoted: str) -> None:
    others = [] if override.startswith("input=") else ["input=x"]
    message = refused("predict", *others, override)
    assert message.startswith(f"{override}: Hydra "), message
    assert reason in message and "quote the path" in message, message
    assert message.endswith(f": {quoted}"), message
    assert "-m" not in message  # a comma in a path is no sweep


@pytest.mark.parametrize(("override", "reason", "quoted"), PATH_CASES)
def test_the_quoted_form_reads_back_as_typed(override: str, reason: str, quoted: str) -> None:
    argv = shlex.split(quoted)  # what the shell passes on
    assert len(argv) == 1 and hydra_quoted(override) == quoted
    key, _, value = override.partition("=")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        typed = to_typed(compose("predict", overrides=argv))
    assert getattr(typed, key) == value


def test_path_keys_and_suffixes_make_a_path() -> None:
    assert quoting_advice("data.root=my (copy)") is not None  # a path key, no slash
    assert quoting_advice("trainer.resume=old(1)/last.pt") is not None
    assert quoting_advice("hydra.run.dir=runs (new)") is not None
    assert quoting_advice("labels=a,b") is not None
    assert quoting_advice("model=bilinear,transposed") is None  # a real sweep: the -m advice stays
    assert "add -m" in refused("train", "model=bilinear,transposed")
    assert quoting_advice("data.class_names=[a,b]") is None  # a list, not a value to quote


def test_other_values_hydra_cannot_read_name_the_override() -> None:
    assert_refused(
        "train", ["trainer.mlflow_experiment=run (1)"], "quote the value: 'trainer.mlflow_experiment=\"run (1)\"'"
    )
    assert_refused("train", ["optim.lr=1e-3)"], "optim.lr=1e-3): Hydra cannot read this override")
    assert_refused("train", ["data.class_names=[a(1),b]"], "data.class_names=[a(1),b]: Hydra cannot read this override")
    assert_refused("train", ["model"], "'model' is not an override")


# 9. output=FILE


def test_output_must_be_a_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    assert_refused(
        "predict", ["input=x", "output=notes.txt"], "output=notes.txt is a file, not a folder: choose a folder"
    )
    assert_refused("evaluate", ["data.root=d", "output=notes.txt"], "output=notes.txt is a file, not a folder")


# 10. more hostile values


@pytest.mark.parametrize(
    ("command", "overrides", "fragments"),
    [
        ("train", ["model.base_channels=100000"], ["model.base_channels=100000 with model.depth=4", "at most 4096"]),
        ("train", ["data.patch_size=100000"], ["data.patch_size=100000", "8192 px"]),
        ("train", ["data.augment.elastic_grid=100000"], ["data.augment.elastic_grid=100000", "between 2 and 64"]),
        ("train", ["data.augment.elastic_sigma=1e30"], ["data.augment.elastic_sigma=1e+30", "between 0 and 1000"]),
        ("train", ["data.augment.intensity.blur_sigma=1e6"], ["blur_sigma=1000000.0", "at most 100 pixels"]),
        ("train", ["data.boundary_width=100000"], ["data.boundary_width=100000", "between 1 and 64"]),
        ("predict", ["input=x", "margin=100000"], ["margin=100000", "between 0 and 1024"]),
        ("evaluate", ["data=synthetic", "data.val_fraction=2"], ["data.val_fraction=2.0", "between 0 and 1"]),
    ],
)
def test_values_that_would_exhaust_memory_or_hang(command: str, overrides: list[str], fragments: list[str]) -> None:
    assert_refused(command, overrides, *fragments)


def test_onnx_opsets_the_installed_onnx_does_not_know() -> None:
    onnx_defs = pytest.importorskip("onnx.defs")
    newest = onnx_defs.onnx_opset_version()
    assert_refused("export", [f"opset={newest + 1}"], f"opset={newest + 1}", f"up to {newest}")
    preflight("export", [f"opset={newest}"], False)
    preflight("export", ["format=torchscript", f"opset={newest + 1}"], False)  # no opset in TorchScript


# End to end: the messages as a shell user sees them, and the run-folder checkpoint.


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("input=data/scan (1).png", ['Hydra cannot read "("', "'input=\"data/scan (1).png\"'"]),
        ("input=data/a,b.png", ['reads ","', "'input=\"data/a,b.png\"'"]),
        ("input=données/é.png", ['cannot read "é"', "'input=\"données/é.png\"'"]),
        ("input=data/${x}.png", ['reads "${"', "'input=\"data/\\${x}.png\"'"]),
    ],
)
def test_path_quoting_end_to_end(tmp_path: Path, override: str, fragments: list[str]) -> None:
    result = run_cli("predict", override, cwd=tmp_path)
    assert_one_line_error(result, f"unetseg predict: error: {override}: ", *fragments)
    assert result.returncode == 2 and "-m" not in result.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_predict_with_a_run_folder_and_a_quoted_path(tmp_path: Path) -> None:
    run = tmp_path / "outputs" / "train" / "2026-01-01_10-00-00"
    save_checkpoint(trained_checkpoint(), run / "checkpoints" / "best.pt")
    (tmp_path / "data").mkdir()
    from unetseg.data.synthetic import synthetic_pair
    from unetseg.io.png import write_png_atomic

    write_png_atomic(tmp_path / "data" / "scan (1).png", synthetic_pair(0, 0, 32)[0])
    result = run_cli(
        "predict", 'input="data/scan (1).png"', f"checkpoint={run.relative_to(tmp_path)}", "output=masks", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "is a folder: using its checkpoints/best.pt" in result.stdout
    assert (tmp_path / "masks" / "scan (1).png").is_file()
    (tmp_path / "masks.png").write_bytes(b"")
    result = run_cli("predict", "input=data", "output=masks.png", f"checkpoint={run}", cwd=tmp_path)
    assert_one_line_error(result, "output=masks.png is a file, not a folder")
