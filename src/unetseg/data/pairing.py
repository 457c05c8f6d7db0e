"""Pairing images with labels by file stem (never by rewriting one path into the other)."""

from __future__ import annotations

from pathlib import Path

from unetseg.io.images import natural_key
from unetseg.runtime.errors import UserError


def _by_stem(files: list[Path], role: str) -> dict[str, Path]:
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise UserError(
                f"two {role} files share the stem '{path.stem}' ({stems[path.stem].name}, {path.name}): "
                "keep one of them"
            )
        stems[path.stem] = path
    return stems


def _names(stems: set[str], lookup: dict[str, Path]) -> str:
    names = sorted((lookup[s].name for s in stems), key=lambda n: natural_key(Path(n)))
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def pair_by_stem(images: list[Path], labels: list[Path], label_folder: Path) -> list[tuple[Path, Path]]:
    """(image, label) pairs in the images' order; any unmatched file on either side is an error."""
    image_stems, label_stems = _by_stem(images, "image"), _by_stem(labels, "label")
    no_label = set(image_stems) - set(label_stems)
    no_image = set(label_stems) - set(image_stems)
    if no_label or no_image:
        parts = []
        if no_label:
            parts.append(f"images without a label in {label_folder}: {_names(no_label, image_stems)}")
        if no_image:
            parts.append(f"labels without an image: {_names(no_image, label_stems)}")
        raise UserError("; ".join(parts) + " (labels are matched to images by file name without extension)")
    return [(path, label_stems[path.stem]) for path in images]
