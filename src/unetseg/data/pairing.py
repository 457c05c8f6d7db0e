"""Finding a data set's images and labels, and pairing them by file name (never by rewriting one path
into the other).

Folders (``data.image_dir`` / ``data.label_dir``, null = look): the first of the common folder pairs that
exists under ``data.root`` (image/label, images/labels, images/masks, ...); two of them at once is an error
naming both; none, with images directly in ``data.root``: masks beside their images.

No ``data.root`` at all (data=isbi, data=folder): ``data/train`` under the launch folder when it holds one
of those pairs, the layout the classic ISBI 2012 U-Net scripts expect (data/train/image, data/train/label,
data/test), said in the start-up line.

Names (``data.label_suffix``, null = look): a label has the image's stem (``7.tif`` ↔ ``7.png``), or the
stem plus a suffix (``7_mask.png``). Without a suffix given, the plain stem is tried first, then each of
LABEL_SUFFIXES; the rule must pair every image, and two rules that both do are an error naming both files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from unetseg.config import DataConfig, DataSource
from unetseg.io.images import list_images, natural_key
from unetseg.runtime.errors import UserError

LABEL_SUFFIXES = ("_mask", "_masks", "_label", "_labels", "_seg", "_gt")
FOLDER_PAIRS = (
    ("image", "label"),
    ("images", "labels"),
    ("images", "masks"),
    ("image", "mask"),
    ("imgs", "labels"),
    ("imgs", "masks"),
    ("img", "mask"),
    ("img", "label"),
    ("img", "labels"),
    ("images", "gt"),
    ("img", "gt"),
    ("images", "annotations"),
    ("raw", "labels"),
)
# Where data=isbi looks without a data.root, relative to the launch folder: the layout of the classic ISBI 2012
# U-Net scripts (data/train/image, data/train/label, and data/test for the images to predict).
ISBI_DEFAULT_ROOT = Path("data", "train")


@dataclass(frozen=True)
class Pairing:
    pairs: list[tuple[Path, Path]]
    rule: str  # how the files were paired, for the start-up line, e.g. "label = image stem + _mask"


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


def pair_by_stem(
    images: list[Path], labels: list[Path], label_folder: Path, suffix: str = ""
) -> list[tuple[Path, Path]]:
    """(image, label) pairs in the images' order, a label's stem being the image's stem + ``suffix``; any
    unmatched file on either side is an error."""
    image_stems, label_stems = _by_stem(images, "image"), _by_stem(labels, "label")
    wanted = {stem + suffix: stem for stem in image_stems}
    no_label = {stem for key, stem in wanted.items() if key not in label_stems}
    no_image = set(label_stems) - set(wanted)
    if no_label or no_image:
        parts = []
        if no_label:
            parts.append(f"images without a label in {label_folder}: {_names(no_label, image_stems)}")
        if no_image:
            parts.append(f"labels without an image: {_names(no_image, label_stems)}")
        rule = f"file name without extension + '{suffix}'" if suffix else "file name without extension"
        known = ", ".join(LABEL_SUFFIXES)
        raise UserError(
            "; ".join(parts) + f" (labels are matched to images by {rule}; suffixes {known} are recognised, "
            "others can be given as data.label_suffix=...)"
        )
    return [(path, label_stems[path.stem + suffix]) for path in images]


def pair_files(image_folder: Path, label_folder: Path, suffix: str | None) -> Pairing:
    """Every image of ``image_folder`` with its label in ``label_folder`` (the same folder: masks beside
    their images), by ``suffix`` or, if None, by the one rule that finds a label for every image."""
    same_folder = image_folder.resolve() == label_folder.resolve()
    files = list_images(image_folder)
    if not files:
        raise UserError(f"no images (png, tif, jpg, bmp) in {image_folder}: add images or point at the right folder")
    candidates = [suffix] if suffix is not None else ["", *LABEL_SUFFIXES]
    if same_folder:
        candidates = [c for c in candidates if c]  # beside the images, only a suffix tells a label apart
        if not candidates:
            raise UserError(
                f"images and labels share the folder {image_folder}, so labels need a suffix: give it with "
                "data.label_suffix=... (e.g. _mask)"
            )
        labels = [path for path in files if path.stem.endswith(tuple(candidates))]
        images = [path for path in files if not path.stem.endswith(tuple(candidates))]
    else:
        images, labels = files, list_images(label_folder)
    label_stems = {path.stem: path for path in labels}
    covering = [c for c in candidates if all(path.stem + c in label_stems for path in images)]
    if len(covering) > 1:
        first, second = covering[:2]
        image = images[0]
        raise UserError(
            f"labels can be paired two ways: {image.name} ↔ {label_stems[image.stem + first].name} or ↔ "
            f"{label_stems[image.stem + second].name}: say which with data.label_suffix={second or first}"
        )
    chosen = covering[0] if covering else candidates[0]
    pairs = pair_by_stem(images, labels, label_folder, chosen)  # names every file left without a partner
    where = "beside the images" if same_folder else f"in {label_folder.name}/"
    rule = f"label = image name + '{chosen}' {where}" if chosen else f"label = image name {where}"
    return Pairing(pairs, rule)


def _first_folder(root: Path, names: list[str]) -> str:
    """The first of ``names`` that is a folder in ``root`` (``.``, the root itself, if none is)."""
    return next((name for name in dict.fromkeys(names) if (root / name).is_dir()), ".")


def find_folders(root: Path, image_dir: str | None, label_dir: str | None) -> tuple[Path, Path, str]:
    """(image folder, label folder, how they were found) under a data root."""
    if image_dir is not None or label_dir is not None:  # one named: the other is the usual one there, if any
        images = image_dir or _first_folder(root, [i for i, _ in FOLDER_PAIRS])
        labels = label_dir or _first_folder(root, [lab for _, lab in FOLDER_PAIRS])
        return root / images, root / labels, f"{images}/ and {labels}/".replace("./ and ./", "side by side")
    present = [(i, lab) for i, lab in FOLDER_PAIRS if (root / i).is_dir() and (root / lab).is_dir()]
    if len(present) > 1:
        (a, b), (c, d) = present[:2]
        raise UserError(
            f"{root} has two pairs of folders, {a}/ + {b}/ and {c}/ + {d}/: say which with "
            f"data.image_dir={a} data.label_dir={b} (or {c} and {d})"
        )
    if present:
        images, labels = present[0]
        return root / images, root / labels, f"{images}/ and {labels}/"
    if list_images(root):
        return root, root, "images and masks side by side"
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    there = f" (its folders: {', '.join(folders)})" if folders else ""
    raise UserError(
        f"no images in {root} and none of the usual folder pairs ({folder_pairs()}){there}: give "
        "data.image_dir=... data.label_dir=..."
    )


def folder_pairs() -> str:
    """Every folder pair :func:`find_folders` looks for, as an error message lists them."""
    return ", ".join(f"{a}/+{b}/" for a, b in FOLDER_PAIRS)


def has_folder_pair(root: Path) -> bool:
    return any((root / images).is_dir() and (root / labels).is_dir() for images, labels in FOLDER_PAIRS)


def default_root(launch: Path) -> Path | None:
    """``data/train`` under ``launch`` when it holds one of the usual folder pairs (ISBI's image/ and label/),
    else None."""
    root = launch / ISBI_DEFAULT_ROOT
    return root if has_folder_pair(root) else None


def no_root_message(launch: Path) -> str:
    """The one line for a folder data set with neither data.root nor the ISBI default folder."""
    root = launch / ISBI_DEFAULT_ROOT
    where = f"{root} has none of them" if root.is_dir() else f"there is no {root}"
    return (
        f"data.root is not set: it defaults to {ISBI_DEFAULT_ROOT} under the launch folder when that holds one of "
        f"the folder pairs {folder_pairs()}, and {where}; give data.root=path/to/train (a folder with image/ and "
        "label/), or run from the folder that holds data/train"
    )


def with_default_root(data: DataConfig, launch: Path | None = None) -> tuple[DataConfig, bool]:
    """``data`` with data.root filled in from :func:`default_root` when a folder data set leaves it unset (a
    one-line UserError when there is no such folder either); the flag says whether the default was taken."""
    if data.source != DataSource.folder or data.root is not None:
        return data, False
    launch = Path.cwd() if launch is None else launch
    root = default_root(launch)
    if root is None:
        raise UserError(no_root_message(launch))
    return dataclasses.replace(data, root=str(root)), True
