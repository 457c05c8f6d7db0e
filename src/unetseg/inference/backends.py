"""What runs the network at predict time: PyTorch (any device) or OpenVINO's CPU plugin.

Both take a normalised (N, C, h, w) float32 batch and return (N, K, h, w) probabilities, so tiling, test-time
augmentation and the decision rule do not know which one ran. ``backend=auto`` is OpenVINO on a CPU when the
``unetseg[openvino]`` extra is installed (1.5-1.8× the torch bf16 path on a 2-core AVX512-BF16 CPU, see
docs/speed-and-memory.md) and torch otherwise (always on a GPU).

OpenVINO gets the network through its PyTorch frontend (``openvino.convert_model`` on the module itself):
no ONNX file, no onnx/onnxscript dependency, and the same :class:`ProbabilityNet` the ONNX export writes, so
the padding and the sigmoid/softmax are the ones every other path uses. The converted model (dynamic batch,
height and width) is kept as OpenVINO IR in the cache folder, keyed by a hash of the weights and spec; each
input shape is compiled for it once and OpenVINO's own model cache (``CACHE_DIR``) keeps the compiled
blobs, so a later run neither converts nor compiles again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from unetseg import __version__
from unetseg.inference.export import probability_net
from unetseg.model import fold_batchnorm
from unetseg.model.checkpoint import Checkpoint
from unetseg.model.head import to_probabilities
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import cache_root
from unetseg.runtime.precision import FastPath

log = logging.getLogger(__name__)

# OpenVINO on a CPU runs a batch no faster per image than one image at a time (measured at 512², classic net:
# 0.635 s against 0.638 s per image), but holds every image's activations at once (+400 MiB for 4 × 512²):
# a call takes at most one 512² image's worth of pixels, so small images still share calls.
PIXELS_PER_CALL = 512 * 512
KEEP_MODELS = 8  # converted checkpoints kept in the cache (the least recently used go first) ...
KEEP_BLOBS = 32  # ... and compiled shapes
KEEP_COMPILED = 4  # compiled shapes held in memory by one run


def openvino_installed() -> bool:
    """Whether ``import openvino`` works (an installed but broken package counts as missing)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(name: str, device: torch.device) -> str:
    """auto → openvino on a CPU with the extra installed, else torch; an explicit choice is checked."""
    if name == "auto":
        return "openvino" if device.type == "cpu" and openvino_installed() else "torch"
    if name == "openvino":
        if device.type != "cpu":
            raise UserError(f"backend=openvino runs on the CPU, but device={device}: use backend=torch on a GPU")
        if not openvino_installed():
            raise UserError(
                "backend=openvino needs the openvino extra: pip install 'unetseg[openvino]' (or use backend=torch)"
            )
    return name


class TorchNetwork:
    """The checkpoint's network in PyTorch, BatchNorm folded, on the fast path (autocast, channels_last)."""

    name = "torch"

    def __init__(self, checkpoint: Checkpoint, fast: FastPath) -> None:
        self.fast = fast
        self.model = fast.prepare_model(fold_batchnorm(checkpoint.build_network()))

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with self.fast.autocast():
            return to_probabilities(self.model(self.fast.prepare_input(batch)))

    def describe(self) -> str:
        return self.fast.describe()


class OpenVinoNetwork:
    """The checkpoint's network compiled by OpenVINO for the CPU, one compiled model per input shape."""

    name = "openvino"

    def __init__(self, checkpoint: Checkpoint, fast: FastPath) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.precision = "bf16" if fast.dtype == torch.bfloat16 else "f32"
        folder = cache_root() / "openvino"
        try:
            (folder / "compiled").mkdir(parents=True, exist_ok=True)
            prune(folder / "compiled", KEEP_BLOBS)  # every input shape adds a blob: keep the newest
            self.core.set_property({"CACHE_DIR": str(folder / "compiled")})
            xml = converted_model(checkpoint, folder / "models")
            try:
                self.model = self.core.read_model(xml)
            except RuntimeError:  # a damaged cache entry (a disk that filled up, an edit): convert it again
                shutil.rmtree(xml.parent, ignore_errors=True)
                self.model = self.core.read_model(converted_model(checkpoint, folder / "models"))
        except OSError as error:  # no usable cache folder: convert in memory, every run
            log.warning("OpenVINO cache %s not usable (%s): converting without it", folder, error)
            self.model = convert(checkpoint)
        self.compiled: OrderedDict[tuple[int, ...], object] = OrderedDict()  # the most recently used last
        self.threads = torch.get_num_threads()

    def compiled_for(self, shape: tuple[int, ...]) -> object:
        if shape in self.compiled:
            self.compiled.move_to_end(shape)
        else:
            if len(self.compiled) >= KEEP_COMPILED:  # images of many sizes: do not hold a model per size
                self.compiled.popitem(last=False)
            model = self.model.clone()
            model.reshape(list(shape))
            config = {
                "INFERENCE_PRECISION_HINT": self.precision,
                "PERFORMANCE_HINT": "LATENCY",  # one request at a time, all cores on it
                "INFERENCE_NUM_THREADS": self.threads,
            }
            self.compiled[shape] = self.core.compile_model(model, "CPU", config)
        return self.compiled[shape]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        height, width = array.shape[-2:]
        step = max(1, PIXELS_PER_CALL // (height * width))
        results = []
        for first in range(0, len(array), step):
            chunk = array[first : first + step]
            compiled = self.compiled_for(chunk.shape)
            results.append(np.array(compiled(chunk)[0]))  # type: ignore[operator]  # a copy: OpenVINO reuses its output
        return torch.from_numpy(results[0] if len(results) == 1 else np.concatenate(results))

    def describe(self) -> str:
        return f"cpu · OpenVINO {self.precision} · {self.threads} threads"


def build_network(checkpoint: Checkpoint, fast: FastPath, backend: str) -> TorchNetwork | OpenVinoNetwork:
    """The network that ``backend`` (auto, torch, openvino) names, for this checkpoint and fast path."""
    name = resolve_backend(backend, fast.device)
    return OpenVinoNetwork(checkpoint, fast) if name == "openvino" else TorchNetwork(checkpoint, fast)


def network_key(checkpoint: Checkpoint) -> str:
    """A hash of everything the converted model depends on: weights, spec, and the versions involved."""
    import openvino as ov

    digest = hashlib.sha256()
    digest.update(json.dumps([repr(checkpoint.model), __version__, ov.__version__, torch.__version__]).encode())
    for name, tensor in sorted(checkpoint.state_dict.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def converted_model(checkpoint: Checkpoint, folder: Path) -> Path:
    """The OpenVINO IR (.xml + .bin) of this checkpoint's network, converted once and kept in ``folder``.
    Written to a temporary folder and renamed into place, so a reader never sees half a model and two
    runs converting at once both end with a whole one."""
    import openvino as ov

    target = folder / network_key(checkpoint)
    xml = target / "model.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        os.utime(target)  # recently used: pruned last
        return xml
    folder.mkdir(parents=True, exist_ok=True)
    model = convert(checkpoint)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder))
    try:
        ov.save_model(model, staging / "model.xml", compress_to_fp16=False)
        try:
            os.replace(staging, target)
        except OSError:  # another run put its (identical) conversion there first
            if not xml.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("converted the network for OpenVINO into %s", target)
    prune(folder, KEEP_MODELS)
    prune(folder.parent / "compiled", KEEP_BLOBS)
    return xml


def convert(checkpoint: Checkpoint) -> object:
    """The checkpoint's ProbabilityNet as an OpenVINO model with dynamic batch, height and width."""
    import openvino as ov

    network = probability_net(checkpoint)
    channels, side = checkpoint.model.in_channels, 4 * 2**checkpoint.model.depth
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic: the shapes are dynamic
        return ov.convert_model(
            network,
            example_input=torch.zeros(1, channels, side, side),
            input=[ov.PartialShape([-1, channels, -1, -1])],
        )


def prune(folder: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently modified entries of a cache folder (best effort: another
    run may be removing or using them too, and a removed entry is only made again)."""
    try:
        entries = sorted(folder.iterdir(), key=lambda entry: entry.stat().st_mtime, reverse=True)
    except OSError:
        return
    for entry in entries[keep:]:
        if entry.name.startswith(".converting-") and time.time() - entry.stat().st_mtime < 3600:
            continue  # another run's conversion in progress (an older one was killed)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
