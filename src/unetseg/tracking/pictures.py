"""Pictures of one validation image for people: the input, its label, the prediction and an error map,
as RGB arrays and PNG bytes (TensorBoard's images and the report's gallery draw the same pictures)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from unetseg.io.png import class_colours, encode_png

FALSE_FOREGROUND = (230, 40, 230)  # magenta: predicted as the class, but it is not
MISSED_FOREGROUND = (40, 200, 40)  # green: the class is there, but was not predicted


def input_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float in [0, 1] (normalised) → (H, W, 3) uint8; one channel is shown in grey."""
    scaled = np.clip(image, 0.0, 1.0) * 255.0
    rgb = np.repeat(scaled[:1], 3, axis=0) if image.shape[0] == 1 else scaled[:3]
    return np.ascontiguousarray(rgb.transpose(1, 2, 0)).astype(np.uint8)


def classes_rgb(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) class ids → (H, W, 3) uint8: two classes in black and white (as masks are written), more
    in the colours of predict's palette PNGs."""
    if num_classes <= 2:
        grey = (classes > 0).astype(np.uint8) * np.uint8(255)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return class_colours(num_classes)[classes]


def positive_class(class_names: Sequence[str], monitor: str) -> int | None:
    """The class an error map is about: the monitored class (``dice_membrane``: membrane), else the last of
    two classes (the foreground); None for several classes and a mean score (every wrong pixel counts)."""
    for prefix in ("dice_", "iou_"):
        name = monitor.removeprefix(prefix)
        if monitor.startswith(prefix) and name in class_names:
            return list(class_names).index(name)
    return 1 if len(class_names) == 2 else None


def error_rgb(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray, positive: int | None) -> np.ndarray:
    """The input, dimmed, with false foreground in magenta and missed foreground in green. Without a
    positive class, a wrong pixel is false foreground where something other than class 0 was predicted."""
    picture = (input_rgb(image).astype(np.float32) * 0.5).astype(np.uint8)
    if positive is None:
        wrong = predicted != truth
        false_foreground, missed = wrong & (predicted != 0), wrong & (predicted == 0)
    else:
        false_foreground = (predicted == positive) & (truth != positive)
        missed = (truth == positive) & (predicted != positive)
    picture[false_foreground] = FALSE_FOREGROUND
    picture[missed] = MISSED_FOREGROUND
    return picture


def panels(
    image: np.ndarray, truth: np.ndarray, predicted: np.ndarray, num_classes: int, positive: int | None
) -> dict[str, np.ndarray]:
    """The four pictures of one validation image, by name: input, label, prediction, errors."""
    return {
        "input": input_rgb(image),
        "label": classes_rgb(truth, num_classes),
        "prediction": classes_rgb(predicted, num_classes),
        "errors": error_rgb(image, truth, predicted, positive),
    }


def thumbnail(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Shrunk (area averaging) so that its longer side is at most ``max_side`` pixels."""
    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def rgb_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) RGB uint8 picture."""
    return encode_png(np.ascontiguousarray(rgb[:, :, ::-1]))  # OpenCV writes BGR


def rgb_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an (H, W, 3) RGB uint8 picture: microscope texture costs a PNG about 5× more."""
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return encoded.tobytes()
