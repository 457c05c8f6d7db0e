"""The values a model spec may take: one rule for the config check (unetseg.checks) and for a checkpoint's spec
(unetseg.model.checkpoint)."""

from __future__ import annotations

from unetseg.config import ModelSpec

MAX_WIDEST_LAYER = 4096  # channels of the U-Net's widest layer, base_channels × 2^(depth-1) (classic: 512)


def spec_problem(spec: ModelSpec) -> str | None:
    """What is wrong with ``spec``'s sizes, as ``model.KEY=VALUE: what it must be``; None if nothing is."""
    if spec.in_channels not in (1, 3):
        return f"model.in_channels={spec.in_channels}: must be 1 or 3 (grayscale or colour)"
    if spec.num_classes < 1:
        return f"model.num_classes={spec.num_classes}: must be at least 1 (1 = binary)"
    if spec.base_channels < 1:
        return f"model.base_channels={spec.base_channels}: must be at least 1"
    if not 1 <= spec.depth <= 8:
        return f"model.depth={spec.depth}: must be between 1 and 8"
    widest = spec.base_channels * 2 ** (spec.depth - 1)
    if widest > MAX_WIDEST_LAYER:
        return (
            f"model.base_channels={spec.base_channels} with model.depth={spec.depth}: the widest layer would have "
            f"{widest:,} channels; keep base_channels × 2^(depth-1) at most {MAX_WIDEST_LAYER} (the default, 64 at "
            "depth 4: 512)"
        )
    return None
