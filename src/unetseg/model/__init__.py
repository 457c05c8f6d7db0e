"""The network: the U-Net and its builder, checkpoints, and the output head (logits → probabilities → classes)."""

from unetseg.model.unet import UNet, build_network, count_parameters, fold_batchnorm

__all__ = ["UNet", "build_network", "count_parameters", "fold_batchnorm"]
