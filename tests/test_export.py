"""`unetseg export`: the exported ONNX and TorchScript models give PyTorch's probabilities (within 1e-4) at sizes
and batch sizes the exporter never saw, carry what predict needs as metadata, and bad input gets one line."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, assert_one_line_error, run_cli, write_dataset
from unetseg.config import ModelSpec
from unetseg.data.normalize import PercentileNormalizer
from unetseg.inference import export as export_module
from unetseg.model import build_network
from unetseg.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from unetseg.model.head import to_probabilities
from unetseg.runtime.errors import UserError

# torch.jit (script, load) warns that it is deprecated; it is still what reads and writes TorchScript.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")

ONNX_MISSING = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
needs_onnx = pytest.mark.skipif(
    bool(ONNX_MISSING),
    reason=f"{', '.join(ONNX_MISSING)} not installed: pip install 'unetseg[onnx]' (the test extra has it)",
)

# Depth 4 (sides padded to multiples of 16), as the classic net; narrow so that it trains in seconds.
TRAIN = [
    "model.base_channels=4",
    "model.depth=4",
    "trainer.epochs=1",
    "trainer.batch_size=2",
    "data.synthetic.num_images=4",
    "data.synthetic.size=48",
]
# (batch, height, width): not multiples of 16, and large, neither of them the exporter's example (2, 33, 47).
UNSEEN = [(1, 100, 75), (2, 512, 512)]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one training run (outputs/train/<stamp>/checkpoints/best.pt)."""
    cwd = tmp_path_factory.mktemp("trained")
    result = run_cli("train", *TRAIN, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd


def best_checkpoint(cwd: Path) -> Path:
    (path,) = (cwd / "outputs" / "train").glob("*/checkpoints/best.pt")
    return path


def pytorch_probabilities(checkpoint: Checkpoint, x: np.ndarray) -> np.ndarray:
    """The reference, written out here rather than taken from the code under test: the trained net, fp32."""
    net = build_network(checkpoint.model)
    net.load_state_dict(checkpoint.state_dict)
    with torch.no_grad():
        return to_probabilities(net.eval()(torch.from_numpy(x))).numpy()


def assert_matches_pytorch(checkpoint: Checkpoint, run, sizes: list[tuple[int, int, int]]) -> None:
    generator = np.random.default_rng(0)
    for batch, height, width in sizes:
        x = generator.random((batch, checkpoint.model.in_channels, height, width), dtype=np.float32)
        got, expected = run(x), pytorch_probabilities(checkpoint, x)
        assert got.shape == expected.shape == (batch, checkpoint.model.num_classes, height, width)
        assert np.abs(got - expected).max() <= TOLERANCE, (height, width, np.abs(got - expected).max())


def assert_metadata(meta: dict[str, str], checkpoint: Checkpoint) -> None:
    assert float(meta["threshold"]) == checkpoint.threshold
    assert json.loads(meta["class_names"]) == checkpoint.class_names
    assert json.loads(meta["normalization"]) == checkpoint.normalization.to_dict()
    assert int(meta["num_classes"]) == checkpoint.model.num_classes
    assert int(meta["min_side"]) == 2 ** (checkpoint.model.depth - 1) + 1


def onnx_runner(path_or_bytes):
    import onnxruntime

    session = onnxruntime.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])
    return session, lambda x: session.run(None, {"image": x})[0]


def torchscript_runner(path_or_buffer, extra: dict[str, str] | None = None):
    module = torch.jit.load(path_or_buffer, map_location="cpu", _extra_files=extra or {})

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


@pytest.mark.slow
@needs_onnx
def test_onnx_export_with_defaults_matches_pytorch(trained: Path) -> None:
    result = run_cli("export", cwd=trained)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""  # the exporters' progress and deprecation noise stays out
    assert "using the newest" in result.stdout and "matches PyTorch within 0.0001" in result.stdout
    (path,) = (trained / "outputs" / "export").glob("*/best.onnx")  # a new run directory, named after the input
    assert str(path) in result.stdout
    checkpoint = load_checkpoint(best_checkpoint(trained))

    session, run = onnx_runner(str(path))
    assert [d for d in session.get_inputs()[0].shape] == ["batch", 1, "height", "width"]
    assert [d for d in session.get_outputs()[0].shape] == ["batch", 1, "height", "width"]
    assert_metadata(session.get_modelmeta().custom_metadata_map, checkpoint)
    assert_matches_pytorch(checkpoint, run, UNSEEN)


@pytest.mark.slow
def test_torchscript_export_into_a_folder_matches_pytorch(trained: Path, tmp_path: Path) -> None:
    checkpoint_path = best_checkpoint(trained)
    result = run_cli("export", f"checkpoint={checkpoint_path}", "format=torchscript", f"output={tmp_path}", cwd=trained)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    path = tmp_path / "best.torchscript.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left beside it
    checkpoint = load_checkpoint(checkpoint_path)

    extra = {export_module.METADATA_FILE: ""}
    run = torchscript_runner(str(path), extra)
    assert_metadata(json.loads(extra[export_module.METADATA_FILE]), checkpoint)
    assert_matches_pytorch(checkpoint, run, UNSEEN)


def random_checkpoint(upsampling: str, in_channels: int, num_classes: int, depth: int) -> Checkpoint:
    """A checkpoint with random weights and non-trivial BatchNorm statistics (folding must not change outputs)."""
    torch.manual_seed(0)
    spec = ModelSpec(upsampling, in_channels, num_classes, base_channels=4, depth=depth)
    net = build_network(spec).train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(2, in_channels, 32, 32) * 3 + 1)
    names = [f"class{i}" for i in range(max(2, num_classes))]
    return Checkpoint(net.state_dict(), spec, PercentileNormalizer(1.0, 99.0), names, 0.4, 3, {})


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_softmax_colour_transposed_net_exports_too(fmt: str) -> None:
    if fmt == "onnx" and ONNX_MISSING:
        pytest.skip(f"{', '.join(ONNX_MISSING)} not installed: pip install 'unetseg[onnx]'")
    checkpoint = random_checkpoint("transposed", in_channels=3, num_classes=3, depth=3)
    exported = export_module.export(checkpoint, fmt, opset=18)
    assert exported.max_difference and max(exported.max_difference.values()) <= TOLERANCE
    run = onnx_runner(exported.data)[1] if fmt == "onnx" else torchscript_runner(io.BytesIO(exported.data))
    assert_matches_pytorch(checkpoint, run, [(3, 37, 61), (1, 9, 200)])  # 9 = the smallest side for depth 3
    x = np.random.default_rng(1).random((1, 3, 30, 41), dtype=np.float32)
    assert np.allclose(run(x).sum(axis=1), 1, atol=1e-5)  # softmax over the classes


def test_scripted_unet_matches_eager_at_any_size() -> None:
    """The U-Net itself scripts (TorchScript) and keeps its size handling, down to 1×1 (replicate padding)."""
    checkpoint = random_checkpoint("bilinear", in_channels=1, num_classes=1, depth=4)
    net = build_network(checkpoint.model)
    net.load_state_dict(checkpoint.state_dict)
    net.eval()
    scripted = torch.jit.script(net)
    for height, width in [(100, 75), (64, 64), (5, 7), (1, 1)]:
        x = torch.rand(2, 1, height, width)
        with torch.no_grad():
            assert torch.equal(scripted(x), net(x))


def median_threshold_checkpoint(checkpoint_path: Path, image_path: Path, path: Path) -> Path:
    """The checkpoint with its threshold at the image's median probability: a briefly trained net may find no
    foreground at 0.5, and a mask that is half foreground tests the decision where it matters."""
    checkpoint = load_checkpoint(checkpoint_path)
    image = checkpoint.normalization(cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)[None])
    median = float(np.median(pytorch_probabilities(checkpoint, image[None])))
    save_checkpoint(dataclasses.replace(checkpoint, threshold=median), path)
    return path


@pytest.mark.slow
@needs_onnx
def test_readme_snippet_reproduces_predict(trained: Path, tmp_path: Path) -> None:
    """The export page's ONNX example (onnxruntime + numpy + opencv only) gives predict's mask."""
    section = (REPO / "docs" / "export.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", section, re.S)
    assert snippet is not None
    code = snippet.group(1)
    assert "import unetseg" not in code and "from unetseg" not in code
    here = tmp_path / "snippet"  # the snippet reads best.onnx and image.png, and writes mask.png, here
    here.mkdir()
    images = write_dataset(tmp_path / "data", count=1, size=75, seed=5) / "image"
    (images / "0.png").rename(here / "image.png")
    checkpoint_path = median_threshold_checkpoint(best_checkpoint(trained), here / "image.png", tmp_path / "median.pt")
    exported = run_cli("export", f"checkpoint={checkpoint_path}", f"output={here / 'best.onnx'}", cwd=trained)
    assert exported.returncode == 0, exported.stderr
    result = subprocess.run([sys.executable, "-c", code], cwd=here, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

    predicted = run_cli(
        "predict",
        f"input={here / 'image.png'}",
        f"checkpoint={checkpoint_path}",
        f"output={tmp_path / 'predicted'}",
        "tile_size=null",
        "precision=fp32",
        cwd=trained,
    )
    assert predicted.returncode == 0, predicted.stderr
    ours = cv2.imread(str(here / "mask.png"), cv2.IMREAD_UNCHANGED)
    theirs = cv2.imread(str(tmp_path / "predicted" / "image.png"), cv2.IMREAD_UNCHANGED)
    assert ours.shape == theirs.shape == (75, 75)
    assert 0.3 < (theirs == 255).mean() < 0.7
    assert (ours == theirs).mean() > 0.999  # a pixel right at the threshold may round either way


@pytest.mark.slow
def test_help_lists_export(tmp_path: Path) -> None:
    usage = run_cli("--help", cwd=tmp_path)
    assert "export" in usage.stdout
    help_text = run_cli("export", "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "format=onnx|torchscript" in help_text.stdout
    assert "metadata_props" in help_text.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["format=tflite"], ["format", "onnx, torchscript"]),
        (["opset=11"], ["opset=11", "18 or newer"]),
        (["checkpoint=nope.pt", "format=torchscript"], ["nope.pt", "does not exist"]),
        (["format=torchscript"], ["no training run with checkpoints/best.pt", "unetseg train"]),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    result = run_cli("export", *args, cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert result.returncode == 2
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs" / "export").iterdir())


@pytest.mark.slow
def test_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    result = run_cli("export", "checkpoint=foreign.pt", "format=torchscript", cwd=tmp_path)
    assert_one_line_error(result, "foreign.pt", "not a unetseg checkpoint")
    assert result.returncode == 2


@pytest.mark.slow
def test_existing_output_is_kept_unless_overwrite(trained: Path, tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"keep me")
    args = ["export", f"checkpoint={best_checkpoint(trained)}", "format=torchscript", f"output={target}"]
    refused = run_cli(*args, cwd=trained)
    assert_one_line_error(refused, "already exists", "overwrite=true")
    assert refused.returncode == 2 and target.read_bytes() == b"keep me"
    replaced = run_cli(*args, "overwrite=true", cwd=trained)
    assert replaced.returncode == 0, replaced.stderr
    torchscript_runner(str(target))  # a loadable TorchScript archive now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["output=model.pt"], ["output=model.pt", "format=onnx writes a .onnx file", "format=torchscript"]),
        (["checkpoint={checkpoint}", "format=torchscript", "output={checkpoint}"], ["is the checkpoint itself"]),
    ],
)
def test_bad_output_is_refused_before_exporting(trained: Path, args: list[str], fragments: list[str]) -> None:
    checkpoint = best_checkpoint(trained)
    before = checkpoint.read_bytes()
    result = run_cli("export", *(a.format(checkpoint=checkpoint) for a in args), "overwrite=true", cwd=trained)
    assert_one_line_error(result, *fragments)
    assert checkpoint.read_bytes() == before


def test_missing_onnx_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    missing = {"onnxscript", "onnxruntime"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    with pytest.raises(UserError, match=r"format=onnx needs onnxscript.*pip install 'unetseg\[onnx\]'"):
        export_module.require_exporter("onnx")
    export_module.require_exporter("torchscript")  # needs nothing beyond torch
    assert export_module._onnx_runner(b"") is None  # without onnxruntime the export is written unchecked
