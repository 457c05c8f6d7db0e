"""Predict's backends (torch, OpenVINO) and batches of images across files: the same masks either way."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import FP32, assert_one_line_error, run_cli, trained_checkpoint
from unetseg.data.synthetic import synthetic_pair
from unetseg.inference.backends import openvino_installed, resolve_backend
from unetseg.inference.predictor import Predictor, Tiling
from unetseg.model.checkpoint import save_checkpoint
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import cache_root
from unetseg.runtime.precision import choose_fast_path

needs_openvino = pytest.mark.skipif(
    not openvino_installed(), reason="the openvino extra is not installed (pip install 'unetseg[openvino]')"
)
BF16 = choose_fast_path(torch.device("cpu"), "bf16", channels_last=True)


def images(count: int, size: int | tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    side = size if isinstance(size, int) else max(size)
    crops = [synthetic_pair(seed, index, side)[0] for index in range(count)]
    height, width = (size, size) if isinstance(size, int) else size
    return [crop[None, :height, :width] for crop in crops]


@pytest.mark.slow  # 8 s: in make test, not in the inner loop
@pytest.mark.parametrize("num_classes", [1, 3])
def test_a_batch_of_images_gives_what_one_by_one_gives(num_classes: int) -> None:
    predictor = Predictor(trained_checkpoint(num_classes), FP32, tiling=Tiling(tile=128, batch_size=4))
    batch = images(4, (96, 80))
    together = predictor.segment_batch(batch, np.float32)
    for image, result in zip(batch, together, strict=True):
        alone = predictor.segment(image, np.float32)
        assert (alone.classes == result.classes).all()
        assert np.abs(alone.probabilities - result.probabilities).max() < 1e-5


def test_auto_picks_openvino_on_a_cpu_only_when_installed() -> None:
    expected = "openvino" if openvino_installed() else "torch"
    assert resolve_backend("auto", torch.device("cpu")) == expected
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(UserError, match="runs on the CPU"):
        resolve_backend("openvino", torch.device("cuda"))


@needs_openvino
@pytest.mark.slow  # 5 s (two OpenVINO compilations): in make test, not in the inner loop
@pytest.mark.parametrize("num_classes", [1, 3])
def test_openvino_matches_torch(num_classes: int) -> None:
    checkpoint = trained_checkpoint(num_classes)
    image = images(1, 200, seed=4)[0]
    tiling = Tiling(tile=128, batch_size=2)
    fp32 = Predictor(checkpoint, FP32, tiling=tiling, backend="openvino").segment(image, np.float32)
    reference = Predictor(checkpoint, FP32, tiling=tiling).segment(image, np.float32)
    assert np.abs(fp32.probabilities - reference.probabilities).max() < 1e-4
    assert (fp32.classes == reference.classes).all()
    bf16 = Predictor(checkpoint, BF16, tiling=tiling, backend="openvino").segment(image, np.float32)
    assert np.abs(bf16.probabilities - reference.probabilities).max() < 0.05  # bf16 keeps 8 bits of mantissa
    assert (bf16.classes == reference.classes).mean() > 0.995
    flips = Tiling(tile=128, batch_size=2, tta="flip")  # several calls whose outputs are summed: none overwritten
    averaged = Predictor(checkpoint, FP32, tiling=flips, backend="openvino").segment(image, np.float32)
    assert (
        np.abs(
            averaged.probabilities - Predictor(checkpoint, FP32, tiling=flips).segment(image, np.float32).probabilities
        ).max()
        < 1e-4
    )


@needs_openvino
@pytest.mark.slow  # an OpenVINO conversion: 4.5 s
def test_openvino_converts_a_checkpoint_once() -> None:
    checkpoint = trained_checkpoint(1)
    image = images(1, 64)[0]
    Predictor(checkpoint, BF16, backend="openvino").predict(image)
    models = cache_root() / "openvino" / "models"
    converted = {entry.name: entry.joinpath("model.xml").stat().st_mtime_ns for entry in models.iterdir()}
    again = Predictor(checkpoint, BF16, backend="openvino")
    again.predict(image)
    assert {entry.name: entry.joinpath("model.xml").stat().st_mtime_ns for entry in models.iterdir()} == converted
    assert again.describe().startswith("cpu · OpenVINO bf16")
    assert any((cache_root() / "openvino" / "compiled").iterdir())  # OpenVINO's compiled blobs


@pytest.mark.slow
def test_predict_batches_across_files_and_writes_what_one_by_one_writes(tmp_path: Path) -> None:
    """Small images of two sizes and one larger than a tile, in a folder: batches of 4 give the same masks as
    batches of 1 (the default backend, whichever it is here)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for index, image in enumerate([*images(5, 64), *images(2, (48, 72), seed=1), *images(1, 150, seed=2)]):
        cv2.imwrite(str(folder / f"{index}.png"), image[0])
    save_checkpoint(trained_checkpoint(1), tmp_path / "model.pt")
    common = [f"input={folder}", f"checkpoint={tmp_path / 'model.pt'}", "tile_size=128", "save=[mask,probability]"]
    outputs = {}
    for batch in (1, 4):
        result = run_cli("predict", *common, f"output={tmp_path / str(batch)}", f"batch_size={batch}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "predicted 8 image(s)" in result.stdout
        outputs[batch] = {
            path.name: cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in (tmp_path / str(batch)).iterdir()
        }
    assert outputs[1].keys() == outputs[4].keys() and len(outputs[1]) == 16
    for name, expected in outputs[1].items():
        if "_probability" not in name:  # the mask
            assert (outputs[4][name] == expected).mean() > 0.999, name
        else:  # 16-bit probabilities
            assert expected.dtype == np.uint16
            assert np.abs(outputs[4][name].astype(int) - expected).max() <= 0.01 * 65535, name


@pytest.mark.slow
def test_backend_openvino_without_the_extra_is_one_line(tmp_path: Path) -> None:
    """An ``openvino`` package that cannot be imported (what a machine without the extra has) on the path."""
    blocker = tmp_path / "blocker" / "openvino"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed')\n")
    save_checkpoint(trained_checkpoint(1), tmp_path / "model.pt")
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), images(1, 32)[0][0])
    path = os.pathsep.join([str(tmp_path / "blocker"), os.environ.get("PYTHONPATH", "")])
    common = [f"input={tmp_path / 'in' / 'a.png'}", f"checkpoint={tmp_path / 'model.pt'}"]
    result = run_cli("predict", *common, "backend=openvino", cwd=tmp_path, env={"PYTHONPATH": path})
    assert_one_line_error(result, "backend=openvino", "pip install 'unetseg[openvino]'")
    assert not [path for path in (tmp_path / "outputs").rglob("*") if path.is_file()]  # the run folder is gone
    result = run_cli(
        "predict", *common, "backend=auto", f"output={tmp_path / 'out'}", cwd=tmp_path, env={"PYTHONPATH": path}
    )
    assert result.returncode == 0, result.stderr  # auto falls back to torch
    assert (tmp_path / "out" / "a.png").is_file()


@needs_openvino
def test_openvino_calls_hold_at_most_one_512_image_of_pixels() -> None:
    """Big tiles go one per call (no faster in a batch on a CPU, and each holds its activations); small
    images share a call."""
    from unetseg.inference.backends import OpenVinoNetwork, TorchNetwork

    checkpoint = trained_checkpoint(1)
    network, reference = OpenVinoNetwork(checkpoint, FP32), TorchNetwork(checkpoint, FP32)
    for batch in (torch.rand(3, 1, 512, 512), torch.rand(5, 1, 64, 64)):
        assert torch.allclose(network(batch), reference(batch), atol=1e-4)
    assert set(network.compiled) == {(1, 1, 512, 512), (5, 1, 64, 64)}


@needs_openvino
@pytest.mark.slow  # 4 s: in make test, not in the inner loop
def test_a_damaged_or_unusable_cache_is_converted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from unetseg.inference.backends import KEEP_COMPILED, OpenVinoNetwork

    checkpoint, image = trained_checkpoint(1), torch.rand(1, 1, 64, 64)
    expected = Predictor(checkpoint, FP32).network(image)
    monkeypatch.setenv("UNETSEG_CACHE_DIR", str(tmp_path / "cache"))
    OpenVinoNetwork(checkpoint, FP32)
    (xml,) = (tmp_path / "cache" / "openvino" / "models").glob("*/model.xml")
    xml.write_text("not a model")  # e.g. a disk that filled up while it was written
    assert torch.allclose(OpenVinoNetwork(checkpoint, FP32)(image), expected, atol=1e-4)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("UNETSEG_CACHE_DIR", str(tmp_path / "file" / "cache"))  # cannot be a folder
    network = OpenVinoNetwork(checkpoint, FP32)
    assert torch.allclose(network(image), expected, atol=1e-4)
    for side in range(16, 16 * (KEEP_COMPILED + 3), 16):  # images of many sizes
        network(torch.rand(1, 1, side, side))
    assert len(network.compiled) == KEEP_COMPILED
