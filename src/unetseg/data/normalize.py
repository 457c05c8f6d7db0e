"""Per-image percentile normalisation to [0, 1].

Dividing by the dtype's maximum fails for 16-bit microscopy, which often uses only a few hundred of its
65,536 grey levels: the image comes out almost black. Mapping each image's low/high percentiles to 0/1
works the same for 8- and 16-bit data and is robust to a few hot pixels. The percentiles are stored in
the checkpoint, so predict normalises exactly as training did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Percentiles of a large image are estimated from a strided subsample of at most this many pixels.
_MAX_SAMPLES = 1 << 20


@dataclass(frozen=True)
class Scaling:
    """One image's normalisation, ``(value - low) / (high - low)`` clipped to [0, 1]: fitted once on the
    whole image, then applied to any part of it (sliding-window tiles), with the same result per pixel."""

    low: float
    high: float

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Any array of the image's values → float32 in [0, 1], same shape."""
        scaled = values.astype(np.float32)
        if self.high <= self.low:  # a constant image: nothing to stretch
            return np.zeros_like(scaled)
        scaled -= np.float32(self.low)
        scaled *= np.float32(1.0 / (self.high - self.low))
        return np.clip(scaled, 0.0, 1.0, out=scaled)


@dataclass(frozen=True)
class PercentileNormalizer:
    low_percentile: float
    high_percentile: float

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(C, H, W) of any numeric dtype → float32 in [0, 1]; all channels share one scale."""
        return self.fit(image)(image)

    def fit(self, image: np.ndarray) -> Scaling:
        """The image's low/high percentiles, from a strided subsample of at most ``_MAX_SAMPLES`` pixels."""
        values = image.reshape(-1)
        stride = max(1, values.size // _MAX_SAMPLES)
        low, high = np.percentile(values[::stride], [self.low_percentile, self.high_percentile])
        return Scaling(float(low), float(high))

    def to_dict(self) -> dict[str, object]:
        return {"method": "percentile", "low": self.low_percentile, "high": self.high_percentile}

    @classmethod
    def from_dict(cls, spec: dict[str, object]) -> PercentileNormalizer:
        if spec.get("method") != "percentile":
            raise ValueError(f"unknown normalisation {spec.get('method')!r}")
        return cls(float(spec["low"]), float(spec["high"]))  # type: ignore[arg-type]
