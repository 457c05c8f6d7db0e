"""What unetseg refuses to decode: images over the pixel limit (from the header, before decoding), data sets
that would not fit in memory, float images holding NaN or infinity, and OpenCV's own errors as one line."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from conftest import TINY, assert_one_line_error, run_cli, write_dataset
from unetseg.config import ModelSpec
from unetseg.data import dataset as dataset_module
from unetseg.data.dataset import check_memory, decoded_bytes, load_folder, load_pairs
from unetseg.data.labels import LabelRule
from unetseg.data.normalize import PercentileNormalizer
from unetseg.inference.sources import open_source, read_pages
from unetseg.io.images import read_image, read_label
from unetseg.io.limits import DEFAULT_MAX_PIXELS, PixelLimit, opencv_failure, read_header
from unetseg.model import build_network
from unetseg.model.checkpoint import Checkpoint, save_checkpoint
from unetseg.runtime.errors import UserError

NORMALIZER = PercentileNormalizer(0.5, 99.5)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A valid-looking 8-bit grey PNG whose header claims ``width``×``height`` but that holds one row."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (width + 1), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


def bomb_tiff(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """An 8×8 TIFF whose directory is patched to claim ``width``×``height`` (its strip still holds 64 bytes)."""
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), photometric="minisblack")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        for name, value in (("ImageWidth", width), ("ImageLength", height), ("RowsPerStrip", height)):
            tag = tags[name]
            struct.pack_into("<HHII", data, tag.offset, tag.code, 4, 1, value)  # as a LONG, one value
    path.write_bytes(bytes(data))
    return path


def bomb_jpeg(path: Path, width: int = 60_000, height: int = 50_000) -> Path:
    """A 16×16 JPEG whose frame header (SOF0) is patched to claim ``width``×``height``."""
    ok, encoded = cv2.imencode(".jpg", np.full((16, 16), 128, np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))
    return path


def image_size(path: Path) -> tuple[int, int] | None:
    header = read_header(path)
    return None if header is None else (header.height, header.width)


# --- sizes from headers --------------------------------------------------------------------------------------


def test_sizes_come_from_the_header_of_each_format(tmp_path: Path) -> None:
    image = np.zeros((20, 30), np.uint8)
    for name in ("a.png", "a.jpg", "a.bmp"):
        cv2.imwrite(str(tmp_path / name), image)
        assert image_size(tmp_path / name) == (20, 30), name
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((20, 30), np.float32))
    assert image_size(tmp_path / "a.tif") == (20, 30)
    assert read_header(tmp_path / "a.tif").itemsize == 4
    cv2.imwrite(str(tmp_path / "g16.png"), np.zeros((5, 7), np.uint16))
    assert read_header(tmp_path / "g16.png").itemsize == 2
    # Files that hold far less than their header claims: only a header read gives these sizes back.
    assert image_size(bomb_png(tmp_path / "bomb.png")) == (100_000, 100_000)
    assert image_size(bomb_tiff(tmp_path / "bomb.tif")) == (100_000, 100_000)
    assert image_size(bomb_jpeg(tmp_path / "bomb.jpg")) == (50_000, 60_000)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert image_size(tmp_path / "junk.png") is None  # the decoder then names the file


@pytest.mark.parametrize(
    ("make", "name", "claim"),
    [
        (bomb_png, "bomb.png", "100000×100000"),
        (bomb_tiff, "bomb.tif", "100000×100000"),
        (bomb_jpeg, "bomb.jpg", "60000×50000"),
    ],
)
def test_an_image_over_the_limit_is_refused_before_decoding(
    tmp_path: Path, make: Callable[[Path], Path], name: str, claim: str
) -> None:
    path = make(tmp_path / name)
    assert path.stat().st_size < 1000
    started = time.perf_counter()
    with pytest.raises(UserError) as error:
        read_image(path, 1, PixelLimit(DEFAULT_MAX_PIXELS, "data.max_pixels"))
    assert time.perf_counter() - started < 1.0
    message = str(error.value)
    assert str(path) in message and "over the limit of 1,073,741,824 (data.max_pixels)" in message
    assert "raise data.max_pixels" in message
    assert f"claims {claim} pixels" in message
    with pytest.raises(UserError, match=r"bomb\.\w+ claims .* \(max_pixels\): check the file, or raise max_pixels"):
        open_source(path)  # predict: from the headers, before any file is decoded


def test_the_limit_is_inclusive_and_0_or_none_lifts_it(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 30), np.uint8))
    assert read_image(tmp_path / "a.png", 1, PixelLimit(600)).shape == (1, 20, 30)  # 20 × 30 = 600: just fits
    assert read_label(tmp_path / "a.png", PixelLimit(600)).shape == (20, 30)
    with pytest.raises(UserError, match=r"a\.png claims 30×20 pixels \(600\), over the limit of 599 \(max_pixels\)"):
        read_image(tmp_path / "a.png", 1, PixelLimit(599))
    with pytest.raises(UserError, match=r"a\.png claims 30×20 pixels"):
        read_label(tmp_path / "a.png", PixelLimit(599, "data.max_pixels"))
    for unlimited in (0, None):
        assert read_image(tmp_path / "a.png", 1, PixelLimit(unlimited)).shape == (1, 20, 30)


def test_each_page_of_a_stack_is_checked(tmp_path: Path) -> None:
    stack = np.zeros((3, 20, 30), np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    assert len(list(read_pages(open_source(tmp_path / "s.tif", max_pixels=600), 1))) == 3
    with pytest.raises(UserError, match=r"page 1/3 of .*s\.tif claims 30×20 pixels \(600\), over the limit of 599"):
        open_source(tmp_path / "s.tif", max_pixels=599)
    # The reader checks again before decoding each page (a source made with another limit, or none).
    source = open_source(tmp_path / "s.tif", max_pixels=0)
    with pytest.raises(UserError, match=r"page 1/3 of .*s\.tif claims 30×20"):
        next(read_pages(type(source)(source.path, source.pages, source.tiff, PixelLimit(599)), 1))


def test_training_data_is_checked_before_any_file_is_decoded(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=24)
    (root / "image" / "0.png").write_bytes(b"not an image")  # decoding would stop here first ...
    bomb_png(root / "image" / "3.png")  # ... but the headers are all read before anything is decoded
    with pytest.raises(UserError, match=r"3\.png claims 100000×100000 .*\(data\.max_pixels\).*raise data\.max_pixels"):
        load_folder(root, "image", "label", 1, LabelRule(1), NORMALIZER)
    with pytest.raises(UserError, match=r"label[/\\]0\.png claims 24×24 pixels \(576\), over the limit of 575"):
        load_pairs(root / "image", root / "label", 1, LabelRule(1), NORMALIZER, max_pixels=575)


# --- memory -------------------------------------------------------------------------------------------------


def test_decoded_bytes_per_pixel() -> None:
    assert decoded_bytes(1000, channels=1) == 5000  # float32 image + uint8 class ids
    assert decoded_bytes(1000, channels=1, instance_pixels=1000) == 9000  # + int32 instance map
    assert decoded_bytes(1000, channels=1, weighted=True) == 9000  # + float32 loss weights
    assert decoded_bytes(1000, channels=3, instance_pixels=400, weighted=True) == 1000 * 17 + 400 * 4
    assert decoded_bytes(4_200_000_000, channels=1, instance_pixels=4_200_000_000) == 37_800_000_000


def test_a_data_set_larger_than_memory_is_refused_with_the_numbers() -> None:
    check_memory(38_200_000_000, 1000, 4_200_000_000, "data.root=big", available=38_200_000_000)  # fits exactly
    with pytest.raises(UserError) as error:
        check_memory(38_200_000_000, 1000, 4_200_000_000, "data.root=big", available=21_300_000_000)
    assert str(error.value) == (
        "the data set (data.root=big) decodes to 38.2 GB (1,000 images, 4.2 Gpx), more than the 21.3 GB of "
        "memory available: use fewer or smaller images, or crop them"
    )


def test_loading_estimates_from_headers_and_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=50)  # 4 × 2,500 pixels, 8-bit masks
    available = {"bytes": 50_000}
    monkeypatch.setattr(dataset_module, "available_memory", lambda: available["bytes"])
    assert len(load_folder(root, "image", "label", 1, LabelRule(1), NORMALIZER)) == 4  # 10,000 px × 5 B fit
    with pytest.raises(UserError, match=r"decodes to 90\.0 kB \(4 images, 10\.0 kpx\), more than the 50\.0 kB"):
        load_folder(root, "image", "label", 1, LabelRule(1), NORMALIZER, weighted=True)  # 9 B per pixel
    with pytest.raises(UserError, match=r"decodes to 90\.0 kB"):  # instance maps are kept too
        load_folder(root, "image", "label", 1, LabelRule(1, encoding="instance"), NORMALIZER)
    with pytest.raises(UserError, match=rf"data set \({root / 'image'}\) decodes to 130\.0 kB"):  # RGB: 13 B
        load_pairs(root / "image", root / "label", 3, LabelRule(1), NORMALIZER)


def test_available_memory_is_known_here() -> None:
    available = dataset_module.available_memory()
    assert available is not None and available > 10_000_000


# --- values ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "bad", "shown"), [(np.float32, np.nan, "nan"), (np.float64, -np.inf, "-inf")])
def test_a_non_finite_pixel_is_named(tmp_path: Path, dtype: type, bad: float, shown: str) -> None:
    image = np.linspace(0, 1, 20 * 30, dtype=dtype).reshape(20, 30)
    tifffile.imwrite(tmp_path / "fine.tif", image)
    assert read_image(tmp_path / "fine.tif", 1).dtype == dtype
    image[12, 7], image[15, 1] = bad, np.inf  # the first in row order is named
    tifffile.imwrite(tmp_path / "x.tif", image)
    expected = rf"x\.tif has a non-finite value \({shown}\) at pixel \(y=12, x=7\): fix or remove the file"
    with pytest.raises(UserError, match=expected):
        read_image(tmp_path / "x.tif", 1)
    with pytest.raises(UserError, match=expected):
        read_label(tmp_path / "x.tif")
    with pytest.raises(UserError, match=expected):
        list(read_pages(open_source(tmp_path / "x.tif"), 1))


def test_a_non_finite_pixel_in_a_stack_names_the_page(tmp_path: Path) -> None:
    stack = np.zeros((3, 40, 30), np.float32)
    stack[2, 33, 29] = np.inf
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    read = read_pages(open_source(tmp_path / "s.tif"), 1)
    assert next(read).shape == (1, 40, 30) and next(read).shape == (1, 40, 30)
    with pytest.raises(UserError, match=r"page 3/3 of .*s\.tif has a non-finite value \(inf\) at pixel \(y=33, x=29\)"):
        next(read)


def test_opencv_errors_become_one_line() -> None:
    size = opencv_failure(cv2.error("... (-215:Assertion failed) pixels <= CV_IO_MAX_IMAGE_PIXELS ..."), "big.png")
    assert "big.png" in str(size) and "OpenCV's limit" in str(size) and "OPENCV_IO_MAX_IMAGE_PIXELS" in str(size)
    other = opencv_failure(cv2.error("OpenCV(5.0.0) loadsave.cpp:1: error: (-2:Unspecified error) broken"), "x.png")
    assert str(other).startswith("cannot decode x.png ((-2:Unspecified error) broken)") and "\n" not in str(other)


def test_without_a_limit_opencv_own_limit_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENCV_IO_MAX_IMAGE_PIXELS", raising=False)  # read by OpenCV once, when it loaded
    path = bomb_png(tmp_path / "big.png", 40_000, 30_000)  # 1.2 Gpx: over OpenCV's 2**30
    with pytest.raises(UserError, match=r"cannot decode .*big\.png: it has more than 1,073,741,824 pixels"):
        read_image(path, 1, PixelLimit(None))


# --- the command line ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_refuses_a_bomb_among_the_images(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=32)
    bomb_png(root / "image" / "2.png")
    result = run_cli("train", "data=isbi", f"data.root={root}", *TINY, cwd=tmp_path)
    assert_one_line_error(result, "2.png claims 100000×100000 pixels", "data.max_pixels", "raise data.max_pixels")
    assert result.returncode == 2


@pytest.mark.slow
def test_train_refuses_a_nan_in_a_float_tiff(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=32)
    (root / "image" / "1.png").unlink()
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    image[3, 17] = np.nan
    tifffile.imwrite(root / "image" / "1.tif", image)
    result = run_cli("train", "data=isbi", f"data.root={root}", *TINY, cwd=tmp_path)
    assert_one_line_error(result, "1.tif has a non-finite value (nan) at pixel (y=3, x=17)", "fix or remove")
    assert result.returncode == 2


@pytest.mark.slow
def test_predict_refuses_a_bomb_before_writing(tmp_path: Path) -> None:
    spec = ModelSpec("bilinear", 1, 1, 4, 2)
    checkpoint = Checkpoint(build_network(spec).state_dict(), spec, NORMALIZER, ["bg", "fg"], 0.5, 1, {})
    save_checkpoint(checkpoint, tmp_path / "model.pt")
    inputs = write_dataset(tmp_path / "p", count=3, size=32) / "image"
    bomb_png(inputs / "2.png")
    result = run_cli("predict", f"input={inputs}", "checkpoint=model.pt", f"output={tmp_path / 'masks'}", cwd=tmp_path)
    assert_one_line_error(result, "2.png claims 100000×100000 pixels", "(max_pixels)", "raise max_pixels")
    assert result.returncode == 2
    assert not (tmp_path / "masks").exists()


def test_the_memory_limit_is_read_from_this_process_own_cgroup_and_those_above() -> None:
    from unetseg.runtime.memory import V1, V2, _own_cgroups

    v1 = _own_cgroups("4:memory:/slurm/uid_0/job_7\n1:cpu:/slurm/uid_0/job_7\n")
    assert [str(folder) for folder, _, _ in v1] == [
        "/sys/fs/cgroup/memory/slurm/uid_0/job_7",
        "/sys/fs/cgroup/memory/slurm/uid_0",
        "/sys/fs/cgroup/memory/slurm",
        "/sys/fs/cgroup/memory",
    ]
    assert {(limit, usage) for _, limit, usage in v1} == {V1[1:]}
    assert [(str(f), *files) for f, *files in _own_cgroups("0::/user.slice/bench\n")] == [
        ("/sys/fs/cgroup/user.slice/bench", *V2[1:]),
        ("/sys/fs/cgroup/user.slice", *V2[1:]),
        ("/sys/fs/cgroup", *V2[1:]),
    ]
    assert [str(f) for f, *_ in _own_cgroups("0::/\n")] == ["/sys/fs/cgroup"]  # a container's own namespace
