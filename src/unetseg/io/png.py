"""Writing PNGs: plain 8/16-bit grey or colour, and indexed (palette) PNGs of class ids."""

from __future__ import annotations

import colorsys
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from unetseg.io.atomic import atomic_open

# RGB colours of classes 1, 2, ... (class 0 is black): green, magenta, yellow, cyan, orange, blue, then
# hues spread by the golden ratio.
_COLOURS = [(60, 200, 60), (200, 60, 200), (240, 220, 40), (40, 200, 230), (250, 140, 40), (40, 80, 220)]


def class_colours(count: int) -> np.ndarray:
    """(count, 3) uint8 RGB: black for class 0, then a distinct colour per class."""
    colours = [(0, 0, 0)]
    for index in range(1, count):
        if index <= len(_COLOURS):
            colours.append(_COLOURS[index - 1])
        else:
            hue = (index * 0.6180339887) % 1.0
            colours.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.95)))
    return np.array(colours, np.uint8)


def encode_png(image: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """PNG bytes; with an (N, 3) uint8 RGB ``palette``, ``image`` holds indices 0..N-1 (class ids) and the
    file is an indexed PNG: viewers show the colours, readers of indexed PNGs (Pillow, ImageJ) get the ids.

    OpenCV cannot write indexed PNGs. The pixel data of an 8-bit grey PNG is byte for byte that of an
    8-bit indexed one, so OpenCV encodes the ids as grey and the header is switched to colour type 3
    with a PLTE chunk, which saves a dependency and keeps OpenCV's fast compressor.
    """
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    data = encoded.tobytes()
    if palette is None:
        return data
    if image.dtype != np.uint8 or image.ndim != 2 or not 0 < len(palette) <= 256:
        raise ValueError("an indexed PNG needs (H, W) uint8 indices and 1 to 256 palette colours")
    header = bytearray(data[16:29])  # after the signature (8 bytes) and IHDR's length and type (8)
    assert data[12:16] == b"IHDR" and header[8] == 8 and header[9] == 0  # 8-bit grey, as OpenCV writes it
    header[9] = 3  # colour type 3: indexed

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    colours = np.ascontiguousarray(palette, dtype=np.uint8).tobytes()
    return data[:8] + chunk(b"IHDR", bytes(header)) + chunk(b"PLTE", colours) + data[33:]


def write_png_atomic(path: Path, image: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Encode to PNG and move into place, so a crash never leaves a half-written mask."""
    encoded = encode_png(image, palette)
    with atomic_open(path) as handle:
        handle.write(encoded)
