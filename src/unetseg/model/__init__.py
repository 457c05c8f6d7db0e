"""U-Net architecture and its builder."""

from unetseg.model.unet import ModelSpec, UNet, count_parameters, fold_batchnorm

__all__ = ["ModelSpec", "UNet", "count_parameters", "fold_batchnorm"]
