"""Per-object measurements of an instance map, with scikit-image's ``regionprops_table``: one row per
object, written by predict as ``<stem>_objects.csv``.

Areas and lengths are in pixels and, when ``pixel_size`` (µm per pixel) is given, also in µm² and µm.
Intensities are of the raw input image (as read, before normalisation), one set of columns per channel.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

from unetseg.objects.instances import touching_edge

_SHAPE = ("label", "area", "centroid", "bbox", "equivalent_diameter_area", "eccentricity", "solidity")
_INTENSITY = ("intensity_mean", "intensity_min", "intensity_max")


def measure_objects(
    objects: np.ndarray, image: np.ndarray, pixel_size: float | None = None, page: int | None = None
) -> list[dict[str, float | int]]:
    """One row per object of ``objects`` ((H, W) ids) in ``image`` ((C, H, W) raw pixels), by id."""
    if not objects.any():
        return []
    intensity = np.moveaxis(image, 0, -1) if image.shape[0] > 1 else image[0]
    from skimage.measure import regionprops_table  # imported when used: scikit-image takes ~0.5 s to import

    table = regionprops_table(objects, intensity_image=intensity, properties=_SHAPE + _INTENSITY)
    edge = set(touching_edge(objects).tolist())
    channels = image.shape[0]
    rows: list[dict[str, float | int]] = []
    for index in range(len(table["label"])):
        object_id = int(table["label"][index])
        row: dict[str, float | int] = {} if page is None else {"page": page}
        area = int(table["area"][index])
        diameter = float(table["equivalent_diameter_area"][index])
        row |= {"id": object_id, "area_px": area}
        if pixel_size is not None:
            row["area_um2"] = area * pixel_size**2
        row |= {
            "centroid_y": float(table["centroid-0"][index]),
            "centroid_x": float(table["centroid-1"][index]),
            "bbox_top": int(table["bbox-0"][index]),
            "bbox_left": int(table["bbox-1"][index]),
            "bbox_bottom": int(table["bbox-2"][index]),
            "bbox_right": int(table["bbox-3"][index]),
            "equivalent_diameter_px": diameter,
        }
        if pixel_size is not None:
            row["equivalent_diameter_um"] = diameter * pixel_size
        row |= {"eccentricity": float(table["eccentricity"][index]), "solidity": float(table["solidity"][index])}
        for channel in range(channels):
            suffix = "" if channels == 1 else f"_c{channel}"
            for stat in ("mean", "min", "max"):
                key = f"intensity_{stat}" if channels == 1 else f"intensity_{stat}-{channel}"
                row[f"intensity_{stat}{suffix}"] = float(table[key][index])
        row["touches_edge"] = int(object_id in edge)
        rows.append(row)
    return rows


def csv_text(rows: Sequence[dict[str, float | int]], columns: Sequence[str]) -> str:
    """The rows as CSV (a header even without objects), floats to 6 significant digits."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: f"{value:.6g}" if isinstance(value, float) else value for key, value in row.items()})
    return buffer.getvalue()


def columns(channels: int, pixel_size: float | None, stack: bool) -> list[str]:
    """The CSV header, in the order ``measure_objects`` fills a row."""
    names = ["page"] if stack else []
    names += ["id", "area_px"] + (["area_um2"] if pixel_size is not None else [])
    names += [
        "centroid_y",
        "centroid_x",
        "bbox_top",
        "bbox_left",
        "bbox_bottom",
        "bbox_right",
        "equivalent_diameter_px",
    ]
    names += ["equivalent_diameter_um"] if pixel_size is not None else []
    names += ["eccentricity", "solidity"]
    for channel in range(channels):
        suffix = "" if channels == 1 else f"_c{channel}"
        names += [f"intensity_{stat}{suffix}" for stat in ("mean", "min", "max")]
    return [*names, "touches_edge"]
