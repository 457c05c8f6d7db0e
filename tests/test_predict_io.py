"""Predict's inputs and outputs: files, folders and globs; TIFF stacks in and out; palette label maps;
probability maps and overlays; reading ahead; the progress bars and the end line."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from conftest import assert_one_line_error, run_cli, trained_checkpoint
from unetseg.data.synthetic import synthetic_pair
from unetseg.inference.predictor import Segmentation
from unetseg.inference.read_ahead import read_ahead
from unetseg.inference.sources import find_inputs, open_source, read_pages
from unetseg.inference.writers import overlay
from unetseg.io.png import class_colours, encode_png
from unetseg.model.checkpoint import save_checkpoint
from unetseg.runtime.errors import UserError


def pages(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.stack([synthetic_pair(seed, index, size)[0] for index in range(count)])


def png_chunks(data: bytes) -> dict[bytes, bytes]:
    chunks, offset = {}, 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks[data[offset + 4 : offset + 8]] = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    return chunks


# --- reading ---------------------------------------------------------------------------------------------


def test_stacks_are_read_page_by_page_whatever_the_codec(tmp_path: Path) -> None:
    stack16 = (pages(3, 40).astype(np.uint16) * 200).astype(np.uint16)
    tifffile.imwrite(tmp_path / "deflate.tif", stack16, photometric="minisblack", compression="zlib")
    cv2.imwritemulti(str(tmp_path / "lzw.tif"), list(stack16))  # OpenCV writes LZW, which tifffile leaves to cv2
    for name in ("deflate.tif", "lzw.tif"):
        source = open_source(tmp_path / name)
        assert source.stack and source.pages == 3
        read = list(read_pages(source, channels=1))
        assert [page.shape for page in read] == [(1, 40, 40)] * 3
        for page, expected in zip(read, stack16, strict=True):
            assert page.dtype == np.uint16 and (page[0] == expected).all()


def test_colour_tiff_pages_come_out_rgb_like_any_colour_image(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (2, 12, 16, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    read = list(read_pages(open_source(tmp_path / "rgb.tif"), channels=3))
    assert (read[1] == rgb[1].transpose(2, 0, 1)).all()
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb[1][:, :, ::-1])  # OpenCV writes BGR
    assert (next(read_pages(open_source(tmp_path / "rgb.png"), channels=3)) == read[1]).all()
    grey = next(read_pages(open_source(tmp_path / "rgb.tif"), channels=1))
    assert grey.shape == (1, 12, 16)


def test_a_single_page_tiff_is_an_ordinary_image(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "one.tif", pages(1, 20)[0])
    source = open_source(tmp_path / "one.tif")
    assert not source.stack and source.pages == 1


def test_wrong_channel_count_and_corrupt_pages_are_named(tmp_path: Path) -> None:
    two = np.zeros((2, 10, 12, 2), np.uint8)
    tifffile.imwrite(tmp_path / "two.tif", two, photometric="minisblack", planarconfig="contig")
    with pytest.raises(UserError, match=r"page 1/2 of .*two.tif has 2 channels per pixel.*grayscale"):
        list(read_pages(open_source(tmp_path / "two.tif"), channels=1))
    bad = corrupt_second_page(tmp_path / "bad.tif")
    read = read_pages(open_source(bad), channels=1)
    assert next(read).shape == (1, 30, 30)  # page 1 is fine
    with pytest.raises(UserError, match=r"cannot decode page 2/3 of .*bad.tif"):
        next(read)


def corrupt_second_page(path: Path) -> Path:
    """A deflate-compressed 3-page stack whose second page's data is garbage."""
    tifffile.imwrite(path, pages(3, 30), photometric="minisblack", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[1].dataoffsets[0], tif.pages[1].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))
    return path


def test_inputs_from_a_file_a_folder_or_a_glob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder, names in (("a", ["10.png", "2.png", "x.txt"]), ("a/b", ["1.tif"])):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (tmp_path / folder / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert [p.name for p in find_inputs("a")[0]] == ["2.png", "10.png"]
    assert find_inputs("a/2.png") == ([tmp_path / "a/2.png"], [tmp_path / "a"])
    images, folders = find_inputs("a/**/*")
    assert [p.relative_to(tmp_path).as_posix() for p in images] == ["a/2.png", "a/10.png", "a/b/1.tif"]
    assert folders == [tmp_path / "a", tmp_path / "a/b"]
    with pytest.raises(UserError, match=r"input=a/\*.jpg matches no images"):
        find_inputs("a/*.jpg")
    with pytest.raises(UserError, match="does not exist"):
        find_inputs("nowhere")


def test_read_ahead_keeps_order_bounds_the_queue_and_passes_errors_on() -> None:
    produced: list[int] = []

    def items():
        for index in range(5):
            produced.append(index)
            yield index

    reader = read_ahead(items(), depth=1)
    assert next(reader) == 0
    time.sleep(0.3)
    assert len(produced) <= 3  # one handed out, one queued, one waiting to be queued
    assert list(reader) == [1, 2, 3, 4]

    def failing():
        yield 1
        raise UserError("page 2 is corrupt")

    reader = read_ahead(failing())
    assert next(reader) == 1
    with pytest.raises(UserError, match="page 2"):
        next(reader)
    threads = threading.active_count()
    early = read_ahead(iter(range(100)))
    next(early)
    early.close()  # a consumer that stops early stops the thread
    assert threading.active_count() == threads


# --- writing ---------------------------------------------------------------------------------------------


def test_palette_png_holds_the_class_ids_and_shows_colours(tmp_path: Path) -> None:
    ids = (np.arange(20 * 30) % 3).astype(np.uint8).reshape(20, 30)
    colours = class_colours(3)
    data = encode_png(ids, colours)
    chunks = png_chunks(data)
    assert chunks[b"IHDR"][8:10] == bytes([8, 3])  # 8-bit, colour type 3 (indexed)
    assert chunks[b"PLTE"] == colours.tobytes()
    (tmp_path / "m.png").write_bytes(data)
    shown = cv2.imread(str(tmp_path / "m.png"))  # OpenCV expands the palette: BGR colours
    assert (shown == colours[ids][:, :, ::-1]).all()
    assert len({tuple(c) for c in class_colours(40)}) == 40  # every class its own colour


@pytest.mark.parametrize("style", ["tint", "outline"])
def test_overlays_mark_the_classes(style: str) -> None:
    classes = np.zeros((600, 40), np.uint8)  # taller than one overlay block (512 rows)
    classes[500:540, 10:30] = 1
    image = np.full((1, 600, 40), 0.5, np.float32)
    picture = overlay(Segmentation(classes, None, lambda rows: image[:, rows]), style, 2, (1,))
    assert picture.shape == (600, 40, 3) and picture.dtype == np.uint8
    grey = picture[0, 0]
    assert (grey == 127).all()
    green = class_colours(2)[1][::-1]  # BGR
    if style == "tint":
        assert (picture[520, 20] == (0.6 * 127.5 + 0.4 * green).astype(np.uint8)).all()
    else:
        assert (picture[500, 20] == green).all() and (picture[499, 20] == green).all()  # both sides
        assert (picture[520, 20] == grey).all()  # inside, away from the border: the image


def test_overlay_can_tint_the_first_class() -> None:
    classes = np.ones((20, 20), np.uint8)
    classes[5:8] = 0  # a membrane
    image = np.full((1, 20, 20), 0.5, np.float32)
    picture = overlay(Segmentation(classes, None, lambda rows: image[:, rows]), "tint", 2, (0,))
    assert (picture[10, 10] == 127).all()  # cells untouched
    assert picture[6, 10, 2] > picture[6, 10, 1] + 50  # membrane tinted red (BGR: red is the last channel)


# --- the CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoints(tmp_path: Path) -> dict[int, Path]:
    paths = {}
    for num_classes in (1, 3):
        paths[num_classes] = tmp_path / f"k{num_classes}.pt"
        save_checkpoint(trained_checkpoint(num_classes), paths[num_classes])
    return paths


@pytest.mark.slow
def test_a_stack_gives_a_stack_and_matches_its_pages_predicted_alone(
    tmp_path: Path, checkpoints: dict[int, Path]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    stack = (pages(3, 56, seed=4).astype(np.uint16) * 250).astype(np.uint16)  # 16-bit
    tifffile.imwrite(inputs / "stack.tif", stack, photometric="minisblack", compression="zlib")
    cv2.imwrite(str(inputs / "page1.png"), stack[1])
    common = [f"checkpoint={checkpoints[1]}", "tile_size=32", "save=[mask,probability,overlay]"]
    result = run_cli("predict", f"input={inputs}/*", f"output={tmp_path / 'out'}", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "page1.png",
        "page1_overlay.png",
        "page1_probability.png",
        "stack.tif",
        "stack_overlay.tif",
        "stack_probability.tif",
    ]
    masks = tifffile.imread(out / "stack.tif")
    probability = tifffile.imread(out / "stack_probability.tif")
    assert masks.shape == (3, 56, 56) and masks.dtype == np.uint8 and set(np.unique(masks)) == {0, 255}
    assert probability.shape == (3, 56, 56) and probability.dtype == np.float32
    assert ((probability >= 0.5) == (masks == 255)).all()
    assert tifffile.imread(out / "stack_overlay.tif").shape == (3, 56, 56, 3)
    alone = cv2.imread(str(out / "page1.png"), cv2.IMREAD_UNCHANGED)
    assert (alone == masks[1]).all()  # a page of a stack is predicted as the same image on its own
    assert np.abs(cv2.imread(str(out / "page1_probability.png"), -1) / 65535 - probability[1]).max() < 1e-4
    assert "predicted 4 image(s) from 2 file(s)" in result.stdout
    assert "images/s" in result.stdout and "megapixels/s" in result.stdout
    assert "files" in result.stdout and "tiles" in result.stdout  # the progress bars


@pytest.mark.slow
def test_several_classes_give_a_palette_label_map_and_raw_ids(tmp_path: Path, checkpoints: dict[int, Path]) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "a.png"), pages(1, 48)[0])
    tifffile.imwrite(inputs / "s.tif", pages(2, 40), photometric="minisblack")
    result = run_cli(
        "predict",
        f"input={inputs}",
        f"checkpoint={checkpoints[3]}",
        f"output={tmp_path / 'out'}",
        "tile_size=32",
        "save=[mask,probability]",
        "probability_format=tiff",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["a.png", "a_ids.png"]
        + [f"a_probability_{c}.tif" for c in "abc"]
        + ["s.tif", "s_ids.tif"]
        + [f"s_probability_{c}.tif" for c in "abc"]
    )
    ids = cv2.imread(str(out / "a_ids.png"), cv2.IMREAD_UNCHANGED)
    assert ids.dtype == np.uint8 and ids.max() < 3 and len(np.unique(ids)) > 1
    assert png_chunks((out / "a.png").read_bytes())[b"IHDR"][9] == 3
    assert (cv2.imread(str(out / "a.png")) == class_colours(3)[ids][:, :, ::-1]).all()
    probabilities = np.stack([tifffile.imread(out / f"a_probability_{c}.tif") for c in "abc"])
    assert probabilities.dtype == np.float32 and (probabilities.argmax(0) == ids).all()
    with tifffile.TiffFile(out / "s.tif") as tif:
        assert len(tif.pages) == 2 and tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
        assert (tif.asarray(key=slice(None)) == tifffile.imread(out / "s_ids.tif")).all()


@pytest.mark.slow
def test_bad_pages_and_channels_stop_before_anything_is_written(tmp_path: Path, checkpoints: dict[int, Path]) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "0.png"), pages(1, 32)[0])  # fine, and first: still nothing may be written
    corrupt_second_page(inputs / "1.tif")
    result = run_cli("predict", f"input={inputs}", f"checkpoint={checkpoints[1]}", "output=out", cwd=tmp_path)
    assert_one_line_error(result, "cannot decode page 2/3 of", "1.tif")
    assert result.returncode == 2 and not (tmp_path / "out").exists()

    (inputs / "1.tif").unlink()
    tifffile.imwrite(inputs / "2.tif", np.zeros((16, 16, 2), np.uint8), photometric="minisblack", planarconfig="contig")
    result = run_cli("predict", f"input={inputs}", f"checkpoint={checkpoints[1]}", "output=out", cwd=tmp_path)
    assert_one_line_error(result, "2.tif has 2 channels per pixel", "grayscale")
    assert result.returncode == 2 and not (tmp_path / "out").exists()
