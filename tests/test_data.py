"""Reading, pairing, normalisation, label encodings, augmentation and the synthetic generator."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from hydra import compose, initialize_config_dir

from conftest import write_dataset
from unetseg.config import AugmentConfig, DataConfig, register_schemas, to_typed
from unetseg.data.augment import Sample, augment, elastic, intensity, random_crop
from unetseg.data.dataset import load_folder, load_splits
from unetseg.data.labels import LabelRule, encode_label
from unetseg.data.normalize import PercentileNormalizer
from unetseg.data.pairing import LABEL_SUFFIXES, find_folders, pair_by_stem, pair_files
from unetseg.data.synthetic import synthetic_pair
from unetseg.io.atomic import refuse_to_overwrite
from unetseg.io.images import list_images, read_image, read_label
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import config_dir, register_resolvers

NORMALIZER = PercentileNormalizer(0.5, 99.5)


def touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(b"")
    return paths


def test_natural_order(tmp_path: Path) -> None:
    touch(tmp_path, "10.png", "2.png", "1.tif", "notes.txt")
    assert [p.name for p in list_images(tmp_path)] == ["1.tif", "2.png", "10.png"]


def test_pairs_by_stem_across_extensions(tmp_path: Path) -> None:
    images = touch(tmp_path / "image", "a.png", "b.tif")
    labels = touch(tmp_path / "label", "b.png", "a.bmp")
    pairs = pair_by_stem(images, labels, tmp_path / "label")
    assert [(i.name, lab.name) for i, lab in pairs] == [("a.png", "a.bmp"), ("b.tif", "b.png")]


def test_pairing_names_unmatched_files(tmp_path: Path) -> None:
    images = touch(tmp_path / "image", "a.png", "img_b.png")
    labels = touch(tmp_path / "label", "a.png", "mask_c.png")
    with pytest.raises(UserError, match=r"images without a label.*img_b\.png.*labels without an image: mask_c\.png"):
        pair_by_stem(images, labels, tmp_path / "label")


def test_pairing_rejects_two_files_with_one_stem(tmp_path: Path) -> None:
    images = touch(tmp_path / "image", "a.png", "a.tif")
    with pytest.raises(UserError, match="share the stem 'a'"):
        pair_by_stem(images, [], tmp_path / "label")


def test_reads_8_and_16_bit_gray_and_colour(tmp_path: Path) -> None:
    gray16 = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 7
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    colour = np.zeros((20, 30, 3), np.uint8)
    colour[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "c.png"), colour)
    image = read_image(tmp_path / "g16.png", channels=1)
    assert image.dtype == np.uint16 and image.shape == (1, 20, 30)
    assert np.array_equal(image[0], gray16)
    rgb = read_image(tmp_path / "c.png", channels=3)
    assert rgb.shape == (3, 20, 30) and rgb[0].max() == 200 and rgb[2].max() == 0
    assert read_image(tmp_path / "c.png", channels=1).shape == (1, 20, 30)
    assert read_image(tmp_path / "g16.png", channels=3).shape == (3, 20, 30)


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match="broken.png"):
        read_image(tmp_path / "broken.png", channels=1)


def test_tiffs_are_read_as_predict_reads_them(tmp_path: Path) -> None:
    gray16 = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 7
    tifffile.imwrite(tmp_path / "g16.tif", gray16, photometric="minisblack", compression="zlib")
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red, stored RGB by tifffile
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    label = (gray16 > 2000).astype(np.uint8) * 255
    tifffile.imwrite(tmp_path / "label.tif", label, photometric="minisblack", compression="zlib")
    assert np.array_equal(read_image(tmp_path / "g16.tif", channels=1)[0], gray16)
    colour = read_image(tmp_path / "rgb.tif", channels=3)
    assert colour[0].max() == 200 and colour[2].max() == 0
    assert np.array_equal(read_label(tmp_path / "label.tif"), label)
    # A corrupt page is an error (OpenCV's TIFF reader returns garbage instead), and so is a stack.
    tifffile.imwrite(tmp_path / "bad.tif", gray16, photometric="minisblack", compression="zlib")
    with tifffile.TiffFile(tmp_path / "bad.tif") as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray((tmp_path / "bad.tif").read_bytes())
    data[offset : offset + count] = b"\xff" * count
    (tmp_path / "bad.tif").write_bytes(bytes(data))
    with pytest.raises(UserError, match="bad.tif"):
        read_label(tmp_path / "bad.tif")
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([gray16, gray16]), photometric="minisblack")
    with pytest.raises(UserError, match="stack of 2 pages"):
        read_image(tmp_path / "stack.tif", channels=1)


def test_normalises_8_bit_to_unit_range() -> None:
    image = np.linspace(0, 255, 1000).astype(np.uint8).reshape(1, 10, 100)
    out = NORMALIZER(image)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0


def test_normalises_16_bit_that_uses_a_small_part_of_its_range() -> None:
    """A 16-bit image with values 1000..1400 must not come out nearly black (as /65535 would)."""
    image = np.random.default_rng(0).integers(1000, 1400, size=(1, 64, 64)).astype(np.uint16)
    out = NORMALIZER(image)
    assert out.min() == 0.0 and out.max() == 1.0
    assert 0.4 < out.mean() < 0.6
    assert (image.astype(np.float32) / 65535).max() < 0.03  # what dtype scaling would have given


def test_constant_image_normalises_to_zeros() -> None:
    assert not NORMALIZER(np.full((1, 8, 8), 77, np.uint8)).any()


def test_normalizer_round_trips_through_a_dict() -> None:
    assert PercentileNormalizer.from_dict(NORMALIZER.to_dict()) == NORMALIZER


@pytest.mark.parametrize(
    "raw",
    [
        np.array([[0, 255], [255, 0]], np.uint8),
        np.array([[0, 1], [1, 0]], np.uint8),
        np.array([[0, 7], [9, 0]], np.uint16),
    ],  # 0/255, 0/1, a 16-bit instance map
)
def test_binary_label_encodings(raw: np.ndarray) -> None:
    assert encode_label(raw, 1, "auto", Path("x.png")).tolist() == [[0, 1], [1, 0]]


def test_all_foreground_and_all_background_labels() -> None:
    assert encode_label(np.full((2, 2), 255, np.uint8), 1, "auto", Path("x")).min() == 1
    assert encode_label(np.zeros((2, 2), np.uint8), 1, "auto", Path("x")).max() == 0


def test_8_bit_instance_map_needs_the_instance_setting() -> None:
    raw = np.array([[0, 1, 2], [3, 0, 4]], np.uint8)
    with pytest.raises(UserError, match=r"5 distinct values.*label_encoding=instance"):
        encode_label(raw, 1, "auto", Path("inst.png"))
    assert encode_label(raw, 1, "instance", Path("inst.png")).tolist() == [[0, 1, 1], [1, 0, 1]]


def test_multiclass_labels_must_be_class_ids() -> None:
    raw = np.array([[0, 1], [2, 0]], np.uint8)
    assert encode_label(raw, 3, "auto", Path("x")).tolist() == raw.tolist()
    with pytest.raises(UserError, match="value 255 but model.num_classes=3"):
        encode_label(np.array([[0, 255]], np.uint8), 3, "auto", Path("x"))


def test_colour_label_with_identical_channels_is_accepted(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "l.png"), np.dstack([np.eye(4, dtype=np.uint8) * 255] * 3))
    assert read_label(tmp_path / "l.png").shape == (4, 4)


def augment_config(**probabilities: float) -> AugmentConfig:
    """The shipped augmentation settings (conf/data/synthetic.yaml) with some probabilities changed."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        register_resolvers()
        register_schemas()
        cfg = compose("train", overrides=[f"data.augment.{key}={value}" for key, value in probabilities.items()])
    return to_typed(cfg).data.augment


def encoded_sample(shape: tuple[int, int], seed: int = 1) -> Sample:
    """Image channels and weights that are functions of the label, so any mismatch shows."""
    label = (np.random.default_rng(seed).random(shape) > 0.5).astype(np.uint8)
    image = np.stack([label * 0.5 + 0.25, label * 0.25]).astype(np.float32)
    return Sample(image, label, (label * 3 + 1).astype(np.float32))


@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
@pytest.mark.parametrize("patch", [None, 16])
def test_crops_flips_and_turns_move_image_label_and_weights_together(shape: tuple[int, int], patch: int | None) -> None:
    rng = np.random.default_rng(1)
    sample = encoded_sample(shape)
    cfg = augment_config(flip=0.5, rotate90=0.75)
    seen = set()
    for _ in range(40):
        out = augment(sample, cfg, patch, rng)
        assert out.image.shape[0] == 2 and out.image.shape[1:] == out.label.shape == out.weight.shape
        assert np.array_equal(out.image[0], out.label * 0.5 + 0.25)
        assert np.array_equal(out.image[1], out.label * 0.25)
        assert np.array_equal(out.weight, out.label * 3 + 1)
        assert out.image.flags.c_contiguous and out.image.dtype == np.float32
        if patch:
            assert out.label.shape == (patch, patch)
        seen.add(out.label.tobytes())
    assert len(seen) > 2  # it really transforms
    if shape[0] != shape[1] and patch is None:
        assert all(len(s) == sample.label.size for s in seen)  # non-square images only turn by 180°


def test_crop_pads_images_smaller_than_the_patch() -> None:
    out = random_crop(encoded_sample((10, 12)), 16, np.random.default_rng(0))
    assert out.label.shape == (16, 16) and out.image.shape == (2, 16, 16)
    assert np.array_equal(out.image[1], out.label * 0.25)


def test_elastic_deformation_warps_everything_alike_and_keeps_label_values() -> None:
    yy, xx = np.mgrid[0:96, 0:96]
    label = (((xx // 12) + (yy // 12)) % 2).astype(np.uint8)  # a checkerboard of 12-px squares
    sample = Sample(label[None].astype(np.float32), label, label.astype(np.float32) * 9 + 1)
    warped = elastic(sample, grid=3, sigma=10.0, rng=np.random.default_rng(3))
    assert set(np.unique(warped.label)) <= {0, 1}
    assert not np.array_equal(warped.label, label)  # 10 px displacements move the squares
    agree = (warped.image[0] > 0.5) == (warped.label == 1)
    assert agree.mean() > 0.97  # bicubic image and nearest-neighbour label follow the same field
    assert np.abs(warped.weight - (warped.label * 9 + 1)).mean() < 0.5
    unchanged = elastic(sample, grid=3, sigma=0.0, rng=np.random.default_rng(3))
    assert np.array_equal(unchanged.label, label)


def test_intensity_augmentations_follow_their_probabilities() -> None:
    image = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    off = augment_config(flip=0, rotate90=0)
    assert np.array_equal(intensity(image, off, np.random.default_rng(0)), image)
    for key in ("brightness", "contrast", "gamma", "noise", "blur"):
        changed = intensity(image, augment_config(**{key: 1.0}), np.random.default_rng(0))
        assert changed.dtype == np.float32 and changed.shape == image.shape
        assert not np.allclose(changed, image), key


def test_synthetic_data_is_deterministic_and_em_like() -> None:
    image, label = synthetic_pair(0, 3, 96)
    again_image, again_label = synthetic_pair(0, 3, 96)
    assert np.array_equal(image, again_image) and np.array_equal(label, again_label)
    assert not np.array_equal(image, synthetic_pair(1, 3, 96)[0])
    assert set(np.unique(label)) == {0, 1}
    assert 0.6 < label.mean() < 0.95  # mostly cell interior, like ISBI's ~78%
    assert image[label == 0].mean() < image[label == 1].mean() - 30  # membranes are dark


def test_load_folder_rejects_size_mismatch(tmp_path: Path) -> None:
    (tmp_path / "image").mkdir()
    (tmp_path / "label").mkdir()
    cv2.imwrite(str(tmp_path / "image" / "a.png"), np.zeros((10, 12), np.uint8))
    cv2.imwrite(str(tmp_path / "label" / "a.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(UserError, match=r"a.png is 12×10 but its label .* is 10×10"):
        load_folder(tmp_path, "image", "label", 1, LabelRule(1), NORMALIZER)


def folder_config(root: Path, **overrides: object) -> DataConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        register_resolvers()
        register_schemas()
        cfg = compose("train", overrides=["data=folder", f"data.root={root}"])
    data = to_typed(cfg).data
    for key, value in overrides.items():
        setattr(data, key, value)
    return data


def test_validation_is_the_last_block_in_natural_order(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=12, size=24)
    train, val = load_splits(folder_config(root, val_fraction=0.25), 1, LabelRule(1), NORMALIZER)
    assert train.names == [str(i) for i in range(9)] and val.names == ["9", "10", "11"]


def test_separate_validation_folder(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=24)
    val_root = write_dataset(tmp_path / "v", count=2, size=24, seed=5)
    train, val = load_splits(folder_config(root, val_root=str(val_root)), 1, LabelRule(1), NORMALIZER)
    assert len(train) == 4 and len(val) == 2


def test_colour_training_images(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=3, size=24)
    for path in (root / "image").iterdir():
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(path), np.dstack([gray, gray // 2, 255 - gray]))
    train, _ = load_splits(folder_config(root), 3, LabelRule(1), NORMALIZER)
    assert train.images[0].shape == (3, 24, 24) and train.images[0].dtype == np.float32


def test_one_overwrite_check_names_what_exists(tmp_path: Path) -> None:
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    refuse_to_overwrite([first, second], overwrite=False)  # nothing there yet
    first.write_bytes(b"x")
    with pytest.raises(UserError, match=r"a\.png already exists: choose another output= or set overwrite=true"):
        refuse_to_overwrite([first], overwrite=False)
    second.write_bytes(b"x")
    with pytest.raises(UserError, match=r"2 output file\(s\) already exist in .* \(e\.g\. a\.png\)"):
        refuse_to_overwrite([first, second], overwrite=False)
    refuse_to_overwrite([first, second], overwrite=True)


def test_pairs_by_the_suffixes_people_use(tmp_path: Path) -> None:
    for suffix in LABEL_SUFFIXES:
        root = tmp_path / suffix.strip("_")
        touch(root / "images", "a.png", "b.tif")
        touch(root / "masks", f"a{suffix}.png", f"b{suffix}.png")
        pairing = pair_files(root / "images", root / "masks", None)
        assert [(i.name, lab.name) for i, lab in pairing.pairs] == [
            ("a.png", f"a{suffix}.png"),
            ("b.tif", f"b{suffix}.png"),
        ]
        assert f"+ '{suffix}'" in pairing.rule


def test_a_given_suffix_and_masks_beside_the_images(tmp_path: Path) -> None:
    touch(tmp_path, "slice_000.png", "slice_000_annot.png", "slice_001.png", "slice_001_annot.png")
    pairing = pair_files(tmp_path, tmp_path, "_annot")
    assert [(i.name, lab.name) for i, lab in pairing.pairs] == [
        ("slice_000.png", "slice_000_annot.png"),
        ("slice_001.png", "slice_001_annot.png"),
    ]
    beside = tmp_path / "beside"
    touch(beside, "x.png", "x_mask.png", "y.png", "y_mask.png")
    image_folder, label_folder, found = find_folders(beside, None, None)
    assert image_folder == label_folder == beside and "side by side" in found
    assert "beside the images" in pair_files(image_folder, label_folder, None).rule


@pytest.mark.parametrize(("images", "labels"), [("image", "label"), ("images", "masks"), ("imgs", "labels")])
def test_common_folder_pairs_are_found(tmp_path: Path, images: str, labels: str) -> None:
    (tmp_path / images).mkdir()
    (tmp_path / labels).mkdir()
    assert find_folders(tmp_path, None, None)[:2] == (tmp_path / images, tmp_path / labels)


def test_ambiguous_pairings_name_both_candidates(tmp_path: Path) -> None:
    touch(tmp_path / "image", "a.png")
    touch(tmp_path / "label", "a_mask.png", "a_gt.png")
    with pytest.raises(UserError, match=r"paired two ways: a\.png ↔ a_mask\.png or ↔ a_gt\.png.*data\.label_suffix="):
        pair_files(tmp_path / "image", tmp_path / "label", None)
    for name in ("images", "masks"):
        (tmp_path / name).mkdir()
    with pytest.raises(UserError, match=r"two pairs of folders, image/ \+ label/ and images/ \+ masks/"):
        find_folders(tmp_path, None, None)


def test_naming_one_folder_finds_the_other(tmp_path: Path) -> None:
    for name in ("image", "label", "instances"):
        (tmp_path / name).mkdir()
    assert find_folders(tmp_path, None, "instances")[:2] == (tmp_path / "image", tmp_path / "instances")
    assert find_folders(tmp_path, "image", None)[:2] == (tmp_path / "image", tmp_path / "label")
