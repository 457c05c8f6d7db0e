"""unetseg: train U-Nets for image segmentation and predict masks, from Hydra configs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("unetseg")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
