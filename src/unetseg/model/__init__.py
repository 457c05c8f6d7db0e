"""U-Net architecture and its builder."""

from unetseg.model.unet import ModelSpec, UNet, count_parameters

__all__ = ["ModelSpec", "UNet", "count_parameters"]
