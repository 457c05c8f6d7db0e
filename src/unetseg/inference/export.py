"""Exporting a checkpoint as a self-contained ONNX or TorchScript model that takes any batch, height and width.

The exported graph is :class:`ProbabilityNet`: a (N, C, H, W) float32 image already normalised to [0, 1]
(the checkpoint's percentiles, as training did) in, (N, K, H, W) probabilities out (sigmoid of one logit,
softmax of several). Thresholding stays outside, as a plain comparison, so the probabilities are usable as
they are. The threshold, class names and normalisation travel as metadata in the file.

Both formats are written to memory first, loaded back and compared with PyTorch at sizes the exporter never
saw, and only then written to disk atomically: a file that exists is a file that was checked.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unetseg import __version__
from unetseg.model import UNet, fold_batchnorm
from unetseg.model.checkpoint import Checkpoint
from unetseg.model.head import to_probabilities
from unetseg.runtime.errors import UserError

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
# The default names: ".torchscript.pt" so that an exported best.pt is never mistaken for a checkpoint.
DEFAULT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
METADATA_FILE = "unetseg.json"  # the TorchScript archive's extra file holding the metadata
TOLERANCE = 1e-4


class ProbabilityNet(nn.Module):
    """Normalised (N, C, H, W) → (N, K, H, W) probabilities, for every H×W the exported file will meet.

    Unlike ``UNet.forward``, it pads and crops unconditionally (a zero padding changes nothing): an exporter
    records the branch that its example input takes, so a branch on the size would freeze the example's
    padding into the graph. It always reflect-pads, which needs each side > 2**(depth-1) pixels
    (``UNet.forward`` replicates for smaller inputs).
    """

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        pads = self.net.alignment_padding(height, width)
        logits = self.net.forward_aligned(F.pad(x, pads, mode="reflect"))
        return to_probabilities(logits[:, :, pads[2] : pads[2] + height, pads[0] : pads[0] + width])


def probability_net(checkpoint: Checkpoint) -> ProbabilityNet:
    """What gets exported: BatchNorm folded into the convolutions, as predict runs it."""
    return ProbabilityNet(fold_batchnorm(checkpoint.build_network())).eval()


def minimum_side(checkpoint: Checkpoint) -> int:
    """The smallest height or width the exported model accepts: reflect padding needs pad < side."""
    return 2 ** (checkpoint.model.depth - 1) + 1


def metadata(checkpoint: Checkpoint) -> dict[str, str]:
    """What a user needs besides the graph to reproduce ``unetseg predict``; all values are strings
    (ONNX metadata_props are string pairs), lists and dicts as JSON."""
    spec = checkpoint.model
    return {
        "unetseg_version": __version__,
        "input": f"{INPUT_NAME}: float32 (N, {spec.in_channels}, H, W), "
        + ("grey" if spec.in_channels == 1 else "RGB, all channels on one scale")
        + f", each image normalised to [0, 1] by its percentiles (see normalization); H and W at least "
        f"{minimum_side(checkpoint)}",
        "output": f"{OUTPUT_NAME}: float32 (N, {spec.num_classes}, H, W), "
        + ("sigmoid of the foreground logit" if spec.num_classes == 1 else "softmax over the classes"),
        "decision": f"foreground where probability >= {checkpoint.threshold:g}"
        if spec.num_classes == 1
        else "argmax over the classes",
        "threshold": repr(float(checkpoint.threshold)),
        "class_names": json.dumps(list(checkpoint.class_names)),
        "normalization": json.dumps(checkpoint.normalization.to_dict()),
        "in_channels": str(spec.in_channels),
        "num_classes": str(spec.num_classes),
        "min_side": str(minimum_side(checkpoint)),
        "model": json.dumps(
            {"upsampling": spec.upsampling.value, "base_channels": spec.base_channels, "depth": spec.depth}
        ),
        "epoch": str(checkpoint.epoch),
    }


@dataclass(frozen=True)
class Exported:
    """An exported model in memory, checked against PyTorch."""

    data: bytes
    seconds: float  # time to export (not to check)
    max_difference: dict[str, float]  # "HxW" → max |exported − PyTorch| over the check batch


def require_exporter(fmt: str) -> None:
    """ONNX export needs optional packages; say how to get them before any work is done."""
    if fmt == "onnx":
        missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
        if missing:
            raise UserError(
                f"format=onnx needs {' and '.join(missing)}, which are not installed: pip install 'unetseg[onnx]' "
                "(or use format=torchscript)"
            )


def export(checkpoint: Checkpoint, fmt: str, opset: int) -> Exported:
    """Export to ``fmt`` in memory, then check the result against the checkpoint's own PyTorch network."""
    net = probability_net(checkpoint)
    m = net.net.size_multiple
    # Batch 2 and unequal, unaligned sides: an example of 1 or H = W could be specialised into the graph.
    example = torch.rand(2, checkpoint.model.in_channels, 2 * m + 1, 3 * m - 1)
    meta = metadata(checkpoint)
    with _quiet_exporters():
        started = time.perf_counter()
        data = _to_onnx(net, example, meta, opset) if fmt == "onnx" else _to_torchscript(net, meta)
        seconds = time.perf_counter() - started
        run = _onnx_runner(data) if fmt == "onnx" else _torchscript_runner(data)
    # Sizes the exporter never saw: unaligned (padded and cropped) and aligned, neither equal to the example.
    sizes = [(3 * m + 5, 2 * m + 3), (4 * m, 4 * m)]
    return Exported(data, seconds, _compare(checkpoint, run, sizes))


def pytorch_probabilities(checkpoint: Checkpoint) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reference: the checkpoint's network as trained (BatchNorm unfolded, its own padding), fp32."""
    net = checkpoint.build_network()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return to_probabilities(net(x))

    return run


def _to_onnx(net: ProbabilityNet, example: torch.Tensor, meta: dict[str, str], opset: int) -> bytes:
    import onnx

    batch, height, width = (torch.export.Dim(name) for name in ("batch", "height", "width"))
    program = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"x": {0: batch, 2: height, 3: width}},
        verbose=False,
    )
    assert program is not None
    model = program.model_proto
    # The exporter names the output's sides by the padding arithmetic that equals them; say what they are.
    dims = model.graph.output[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "batch", "height", "width"
    model.doc_string = "unetseg U-Net: normalised image in, probabilities out (see metadata_props)"
    onnx.helper.set_model_props(model, meta)
    return model.SerializeToString()


def _to_torchscript(net: ProbabilityNet, meta: dict[str, str]) -> bytes:
    """Scripted, not traced: scripting keeps the size arithmetic symbolic instead of baking in one size."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer, _extra_files={METADATA_FILE: json.dumps(meta, indent=2)})
    return buffer.getvalue()


Runner = Callable[[np.ndarray], np.ndarray]


def _onnx_runner(data: bytes) -> Runner | None:
    """onnxruntime on the exported bytes, or None when it is not installed (the check is then skipped)."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


def _torchscript_runner(data: bytes) -> Runner:
    module = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run


def _compare(checkpoint: Checkpoint, run: Runner | None, sizes: list[tuple[int, int]]) -> dict[str, float]:
    """Max |exported − PyTorch| per size; an export that disagrees is a bug, so it stops the command."""
    if run is None:
        return {}
    reference = pytorch_probabilities(checkpoint)
    generator = torch.Generator().manual_seed(0)
    differences = {}
    for height, width in sizes:
        x = torch.rand(2, checkpoint.model.in_channels, height, width, generator=generator)
        expected = reference(x).numpy()
        got = run(x.numpy())
        if got.shape != expected.shape:
            raise RuntimeError(f"exported model gave shape {got.shape} for {tuple(x.shape)}, expected {expected.shape}")
        differences[f"{height}x{width}"] = float(np.abs(got - expected).max())
    worst = max(differences.values())
    if not worst <= TOLERANCE:
        raise RuntimeError(f"exported model differs from PyTorch by {worst:.2e} (> {TOLERANCE}): {differences}")
    return differences


@contextmanager
def _quiet_exporters() -> Iterator[None]:
    """The exporters print progress and upstream deprecation notices (torch.jit is deprecated, yet it reads and
    writes the TorchScript format); a CLI shows its own summary instead."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)
