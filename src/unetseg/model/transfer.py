"""Starting a network from another run's weights (``trainer.init_from``, fine-tuning).

The network's shape (upsampling, input channels, width, depth) must be the source's: every weight then has
its place. Only the number of classes may differ; the output layer (``outc``, a 1×1 convolution) then starts
afresh, as this run's network was initialised, and every other weight is the source's.
"""

from __future__ import annotations

import torch

from unetseg.config import ModelSpec

SHAPE_FIELDS = ("upsampling", "in_channels", "base_channels", "depth")  # what must match; num_classes may not
OUTPUT_LAYER = "outc."  # the state_dict prefix of the last layer (unetseg.model.unet.UNet.outc)


def shape_difference(source: ModelSpec, spec: ModelSpec) -> tuple[str, str, str] | None:
    """(the source's values, this run's, the overrides that match the source) for the fields of
    :data:`SHAPE_FIELDS` that differ, e.g. ``("base_channels 16, depth 4", "base_channels 32, depth 3",
    "model.base_channels=16 model.depth=4")``; None when the shapes match."""
    differing = [name for name in SHAPE_FIELDS if getattr(source, name) != getattr(spec, name)]
    if not differing:
        return None
    there, here = source.to_dict(), spec.to_dict()
    return (
        ", ".join(f"{name} {there[name]}" for name in differing),
        ", ".join(f"{name} {here[name]}" for name in differing),
        " ".join(f"model.{name}={there[name]}" for name in differing),
    )


def load_transferable(network: torch.nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """Copy ``weights`` (a checkpoint's state_dict, of a network with the same shape) into ``network``, except
    the output layer's tensors when their shape differs (another number of classes): those keep the values
    ``network`` was built with. Returns the names of the tensors left so (empty when every weight was copied)."""
    own = network.state_dict()
    fresh = [key for key in own if key.startswith(OUTPUT_LAYER) and own[key].shape != weights[key].shape]
    network.load_state_dict({**own, **{key: value for key, value in weights.items() if key not in fresh}})
    return fresh
