"""Every kind of bad input, as one table run through the real CLI: settings, data, checkpoints, paths, predict,
evaluate and export. Each case asserts a non-zero exit, no traceback, one line naming the key or file (its
fragments), and that no file was created or changed anywhere, the run folder included (it is removed).

Like every CLI run of the tests (conftest.run_cli), each case runs ``unetseg.cli.main`` in a process of its own,
forked from a server that imported unetseg once (tests/forked_cli.py)."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch

from conftest import TINY, assert_one_line_error, run_cli, write_dataset
from test_image_limits import bomb_png, bomb_tiff
from unetseg.config import ModelSpec
from unetseg.data.normalize import PercentileNormalizer
from unetseg.model import build_network
from unetseg.model.checkpoint import Checkpoint, save_checkpoint

pytestmark = pytest.mark.slow  # end-to-end: the real CLI in a subprocess (make test-fast skips them)

SPEC = ModelSpec("bilinear", 1, 1, 4, 2)
DATA = ["data=isbi", "data.root=d", *TINY]  # train on the case's own copy of the good data set, d/
PREDICT = ["predict", "input={ws}/d/image", "checkpoint={ws}/good.pt"]

Make = Callable[[Path, Path], None]  # (the case's folder, the shared workspace): makes the bad file


@dataclass
class Case:
    id: str
    args: list[str]  # {ws}: the shared workspace (good data d/, good.pt); {here}: the case's folder (its cwd)
    fragments: list[str]
    make: Make | None = None


# --- what the cases make ------------------------------------------------------------------------------------


def data(here: Path, ws: Path) -> Path:
    return write_dataset(here / "d", count=4, size=32)


def with_data(change: Callable[[Path], object]) -> Make:
    """The good data set in d/, then ``change(d)``."""

    def make(here: Path, ws: Path) -> None:
        change(data(here, ws))

    return make


def edited_checkpoint(edit: Callable[[dict], object], name: str = "bad.pt") -> Make:
    """good.pt as a dict, edited, saved as ``name`` in the case's folder (weights_only-loadable)."""

    def make(here: Path, ws: Path) -> None:
        raw = torch.load(ws / "good.pt", weights_only=True)
        edit(raw)
        torch.save(raw, here / name)

    return make


def write(path: str, content: bytes) -> Make:
    def make(here: Path, ws: Path) -> None:
        (here / path).parent.mkdir(parents=True, exist_ok=True)
        (here / path).write_bytes(content)

    return make


def float_tiff(path: str, value: float, shape: tuple[int, ...] = (32, 32), at: tuple[int, ...] = (3, 17)) -> Make:
    def make(here: Path, ws: Path) -> None:
        (here / path).parent.mkdir(parents=True, exist_ok=True)
        array = np.zeros(shape, np.float32)
        array[at] = value
        tifffile.imwrite(here / path, array, photometric="minisblack")

    return make


def several(*makes: Make) -> Make:
    def make(here: Path, ws: Path) -> None:
        for one in makes:
            one(here, ws)

    return make


class Hostile:
    """A pickle that would run code when unpickled: weights_only loading must refuse it, unrun."""

    def __reduce__(self) -> tuple:
        return (print, ("HOSTILE CODE RAN",))


def hostile_pickle(here: Path, ws: Path) -> None:
    with (here / "hostile.pt").open("wb") as handle:
        pickle.dump({"format": "unetseg-checkpoint", "payload": Hostile()}, handle)


def drop(key: str) -> Callable[[dict], object]:
    return lambda raw: raw.pop(key)


def set_model(key: str, value: object) -> Callable[[dict], object]:
    return lambda raw: raw["model"].__setitem__(key, value)


def nan_weight(raw: dict) -> None:
    raw["state_dict"]["inc.0.weight"].view(-1)[0] = math.nan


def old_run(here: Path, ws: Path) -> None:
    (here / "old" / "checkpoints").mkdir(parents=True)
    (here / "old" / "checkpoints" / "best.pt").write_bytes((ws / "good.pt").read_bytes())


# --- the table ----------------------------------------------------------------------------------------------

CASES = [
    # settings
    Case("unknown command", ["trian"], ["unknown command 'trian'", "train"]),
    Case("typo in a key", ["train", "optim.lrr=1"], ["optim.lrr", "did you mean optim.lr"]),
    Case("key in the wrong group", ["train", "trainer.lr=1e-3"], ["trainer.lr", "did you mean optim.lr?"]),
    Case("added unknown key", ["train", "+optim.lrr=1"], ["optim.lrr", "no such key"]),
    Case("unknown option", ["train", "model=bilineer"], ["model=bilineer", "did you mean model=bilinear"]),
    Case("wrong type", ["train", "trainer.epochs=abc"], ["trainer.epochs", "Integer"]),
    Case("unknown enum value", ["train", "model.upsampling=nearest"], ["model.upsampling", "bilinear, transposed"]),
    Case("negative learning rate", ["train", "optim.lr=-1"], ["optim.lr", "> 0"]),
    Case("fraction out of range", ["train", "data.val_fraction=1.5"], ["data.val_fraction", "between 0 and 1"]),
    Case("isbi without a root", ["train", "data=isbi"], ["data.root is not set"]),
    Case("sweep without -m", ["train", "model=bilinear,transposed"], ["is a sweep", "-m"]),
    Case("-m with --cfg", ["train", "-m", "--cfg", "job"], ["cannot be combined"]),
    Case("bad value inside a sweep", ["train", "-m", "optim.lr=1e-3,-1"], ["optim.lr=-1.0"]),
    Case("unknown flag", ["train", "--foo"], ["unrecognized arguments: --foo", "unetseg train --help"]),
    Case("not an override", ["train", "model"], ["'model' is not an override", "KEY=VALUE"]),
    Case("root for synthetic data", ["train", "data.root=somewhere"], ["data=synthetic makes its own", "data=isbi"]),
    Case("model key in predict", ["predict", "input=x", "model=transposed"], ["model: no such key", "checkpoint"]),
    Case("predict without input", ["predict"], ["input is not set"]),
    Case("unknown save kind", ["predict", "input=x", "save=[mask,heatmap]"], ["save=", "mask, probability, overlay"]),
    Case("overlap of 1", ["predict", "input=x", "overlap=1"], ["overlap=1.0", "[0, 1)"]),
    Case("probability format", ["predict", "input=x", "probability_format=jpeg"], ["probability_format", "png, tiff"]),
    Case("overlay style", ["predict", "input=x", "overlay_style=fill"], ["overlay_style", "tint, outline"]),
    Case("export format", ["export", "format=caffe"], ["format", "onnx", "torchscript"]),
    Case("export opset", ["export", "opset=10"], ["opset=10", "opset 18 or newer"]),
    Case("infinite learning rate", ["train", "optim.lr=inf"], ["optim.lr=inf: must be a finite number"]),
    Case("NaN learning rate", ["train", "optim.lr=nan"], ["optim.lr=nan: must be a finite number"]),
    Case("NaN threshold setting", ["train", "trainer.threshold=nan"], ["trainer.threshold=nan: must be a finite"]),
    Case("infinite overlap", ["predict", "input=x", "overlap=inf"], ["overlap=inf: must be a finite number"]),
    Case(
        "inf inside a sweep", ["train", "-m", "optim.weight_decay=0,inf"], ["optim.weight_decay=inf: must be a finite"]
    ),
    Case(
        "malformed device",
        ["train", "trainer.device=cuda:foo"],
        ["trainer.device=cuda:foo: not a device name", "cuda:N"],
    ),
    Case("unknown device", ["train", "trainer.device=banana"], ["trainer.device=banana", "auto, cpu, cuda, cuda:N"]),
    Case("absent GPU", ["train", "trainer.device=cuda:99"], ["trainer.device=cuda:99: "]),
    Case("negative seed", ["train", "trainer.seed=-1"], ["trainer.seed=-1", "between 0 and 4294967295"]),
    Case("negative synthesize seed", ["synthesize", "output=x", "seed=-1"], ["seed=-1", "between 0 and 4294967295"]),
    Case(
        "huge synthetic images",
        ["train", "data.synthetic.size=40000"],
        ["data.synthetic.size=40000", "between 16 and 4096"],
    ),
    Case(
        "too many synthetic images",
        ["train", "data.synthetic.num_images=100000000"],
        ["data.synthetic.num_images=100000000", "at most 268,435,456 pixels"],
    ),
    Case(
        "duplicate class names", ["train", "data.class_names=[a,a]"], ["data.class_names=['a', 'a']", "more than once"]
    ),
    Case("empty class name", ["train", 'data.class_names=[a,""]'], ["data.class_names=", "class 1 has an empty name"]),
    Case("deleting a required key", ["train", "~optim.lr"], ["~optim.lr: optim.lr is required", "optim.lr=VALUE"]),
    Case("deleting a group", ["train", "~optim"], ["the optim group is required", "optim=adam, optim=rmsprop"]),
    Case("a null group", ["train", "model=null"], ["model=null", "model=bilinear, model=transposed"]),
    Case("network too wide", ["train", "model.base_channels=100000"], ["model.base_channels=100000", "at most 4096"]),
    Case("crop larger than any image", ["train", "data.patch_size=100000"], ["data.patch_size=100000", "8192 px"]),
    Case("huge margin", ["predict", "input=x", "margin=100000"], ["margin=100000", "between 0 and 1024"]),
    Case("unknown opset", ["export", "opset=1000"], ["opset=1000", "the installed onnx knows opsets up to"]),
    # paths Hydra cannot read unquoted (the shell has already split the words: each is one argument here)
    Case(
        "parenthesis in a path",
        ["predict", "input=data/scan (1).png"],
        ['input=data/scan (1).png: Hydra cannot read "(" unquoted', "quote the path: 'input=\"data/scan (1).png\"'"],
    ),
    Case(
        "equals sign in a path",
        ["predict", "input=data/a=b.png"],
        ['Hydra cannot read "=" unquoted', "'input=\"data/a=b.png\"'"],
    ),
    Case(
        "comma in a path",
        ["predict", "input=data/a,b.png"],
        ['Hydra reads "," unquoted as a list of values', "'input=\"data/a,b.png\"'"],
    ),
    Case(
        "interpolation in a path",
        ["predict", "input=data/${x}.png"],
        ['Hydra reads "${" as an interpolation', "'input=\"data/\\${x}.png\"'"],
    ),
    Case(
        "non-ASCII path",
        ["predict", "input=données/é.png"],
        ['Hydra cannot read "é" unquoted', "'input=\"données/é.png\"'"],
    ),
    Case(
        "checkpoint path with a parenthesis",
        ["predict", "input=x", "checkpoint=run (2)/best.pt"],
        ['checkpoint=run (2)/best.pt: Hydra cannot read "("', "'checkpoint=\"run (2)/best.pt\"'"],
    ),
    Case(
        "data root with spaces and parentheses",
        ["train", "data=isbi", "data.root=my data (copy)"],
        ['data.root=my data (copy): Hydra cannot read "("', "'data.root=\"my data (copy)\"'"],
    ),
    Case(
        "checkpoint is a folder without one",
        [*PREDICT[:2], "checkpoint=emptyrun"],
        ["checkpoint=emptyrun is a folder without", "checkpoints/best.pt"],
        write("emptyrun/notes.txt", b"not a run"),
    ),
    Case(
        "output is a file",
        [*PREDICT, "output=afile"],
        ["output=afile is a file, not a folder"],
        write("afile", b"data"),
    ),
    Case("negative pixel limit", ["train", *DATA, "data.max_pixels=-1"], ["data.max_pixels=-1", "0 for no limit"]),
    # run folders
    Case(
        "train into a folder with a run",
        ["train", "hydra.run.dir=old", *TINY],
        ["old already holds a training run", "trainer.resume="],
        old_run,
    ),
    Case(
        "resume from a folder without last.pt",
        ["train", *TINY, "trainer.resume=emptyrun"],
        ["trainer.resume=emptyrun is a folder without", "last.pt"],
        write("emptyrun/notes.txt", b"not a run"),
    ),
    Case("resume from a missing file", ["train", *TINY, "trainer.resume=nope.pt"], ["nope.pt", "does not exist"]),
    Case(
        "resume from best.pt",
        ["train", *TINY, "trainer.resume={ws}/good.pt"],
        ["good.pt", "no training state to resume from"],
    ),
    Case(
        "resume=auto without runs",
        ["train", *TINY, "trainer.resume=auto"],
        ["trainer.resume=auto: no training run with checkpoints/last.pt"],
    ),
    # training data
    Case("missing data folder", ["train", "data=isbi", "data.root=nowhere", *TINY], ["nowhere", "does not exist"]),
    Case(
        "wrong subfolder names",
        ["train", *DATA, "data.image_dir=images"],
        ["data.image_dir=images", "folders in", "image, label"],
        data,
    ),
    Case(
        "empty data folder",
        ["train", "data=isbi", "data.root=empty", *TINY],
        ["no images", "empty"],
        several(write("empty/image/.keep", b""), write("empty/label/.keep", b"")),
    ),
    Case(
        "unpaired files",
        ["train", *DATA],
        ["images without a label", "3.png", "labels without an image: extra.png"],
        with_data(lambda d: (d / "label" / "3.png").rename(d / "label" / "extra.png")),
    ),
    Case(
        "corrupt image",
        ["train", *DATA],
        ["1.png", "corrupt"],
        with_data(lambda d: (d / "image" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")),
    ),
    Case(
        "empty image file",
        ["train", *DATA],
        ["0.png", "empty"],
        with_data(lambda d: (d / "image" / "0.png").write_bytes(b"")),
    ),
    Case(
        "label of another size",
        ["train", *DATA],
        ["2.png", "same size"],
        with_data(lambda d: cv2.imwrite(str(d / "label" / "2.png"), np.zeros((30, 32), np.uint8))),
    ),
    Case(
        "label with many values",
        ["train", *DATA],
        ["0.png", "distinct values", "label_encoding=instance"],
        with_data(
            lambda d: cv2.imwrite(str(d / "label" / "0.png"), (np.arange(1024) % 5).astype(np.uint8).reshape(32, 32))
        ),
    ),
    Case(
        "images too small for the depth",
        ["train", "data.synthetic.size=16", "data.synthetic.num_images=4", "model.base_channels=2"],
        ["too small for model.depth=4", "lower model.depth"],
    ),
    Case(
        "decompression bomb PNG",
        ["train", *DATA],
        ["2.png claims 100000×100000 pixels", "data.max_pixels"],
        with_data(lambda d: bomb_png(d / "image" / "2.png")),
    ),
    Case(
        "a valid image over a lowered limit",
        ["train", *DATA, "data.max_pixels=100000000"],
        ["2.png claims 16000×16000 pixels (256,000,000)", "data.max_pixels"],
        with_data(lambda d: cv2.imwrite(str(d / "image" / "2.png"), np.zeros((16000, 16000), np.uint8))),
    ),
    Case(
        "decompression bomb TIFF",
        ["train", *DATA],
        ["1.tif claims 100000×100000 pixels", "data.max_pixels"],
        with_data(lambda d: ((d / "image" / "1.png").unlink(), bomb_tiff(d / "image" / "1.tif"))),
    ),
    Case(
        "data set larger than memory, held in memory",
        ["train", *DATA, "data.max_pixels=0", "data.in_memory=true"],
        ["decodes to", "GB of memory available", "data.in_memory=auto"],
        with_data(lambda d: (bomb_png(d / "image" / "2.png"), bomb_png(d / "label" / "2.png"))),
    ),
    Case(
        "data set larger than the disk cache's disk",
        ["train", *DATA, "data.max_pixels=0"],  # data.in_memory=auto: the disk cache, whose disk is too small
        ["the data cache", "EB more but its disk has", "data.cache_dir="],
        with_data(
            lambda d: (
                (d / "image" / "2.png").unlink(),
                (d / "label" / "2.png").unlink(),
                bomb_tiff(d / "image" / "2.tif", 3_000_000_000, 3_000_000_000),
                bomb_tiff(d / "label" / "2.tif", 3_000_000_000, 3_000_000_000),
            )
        ),
    ),
    Case(
        "NaN pixel in a float TIFF",
        ["train", *DATA],
        ["1.tif has a non-finite value (nan) at pixel (y=3, x=17)"],
        several(
            data, lambda here, ws: (here / "d" / "image" / "1.png").unlink(), float_tiff("d/image/1.tif", math.nan)
        ),
    ),
    Case(
        "a stack as a training image",
        ["train", *DATA],
        ["0.tif is a stack of 3 pages", "its own file"],
        several(
            data,
            lambda here, ws: (here / "d" / "image" / "0.png").unlink(),
            float_tiff("d/image/0.tif", 0.5, (3, 32, 32), (0, 0, 0)),
        ),
    ),
    # checkpoints (hostile and damaged files)
    Case("missing checkpoint", [*PREDICT[:2], "checkpoint=nope.pt"], ["nope.pt", "does not exist"]),
    Case("no training run yet", ["predict", "input={ws}/d/image"], ["no training run with checkpoints/best.pt"]),
    Case(
        "foreign checkpoint",
        [*PREDICT[:2], "checkpoint=foreign.pt"],
        ["foreign.pt", "not a unetseg checkpoint"],
        lambda here, ws: torch.save({"state_dict": {}}, here / "foreign.pt"),
    ),
    Case(
        "not a checkpoint at all",
        [*PREDICT[:2], "checkpoint=notes.pt"],
        ["notes.pt", "not a unetseg checkpoint"],
        write("notes.pt", b"just some text"),
    ),
    Case(
        "hostile pickle",
        [*PREDICT[:2], "checkpoint=hostile.pt"],
        ["hostile.pt", "not a unetseg checkpoint"],
        hostile_pickle,
    ),
    Case(
        "checkpoint without class names",
        [*PREDICT[:2], "checkpoint=bad.pt"],
        ["bad.pt", "it has no class_names"],
        edited_checkpoint(drop("class_names")),
    ),
    Case(
        "checkpoint with an unknown key",
        [*PREDICT[:2], "checkpoint=bad.pt"],
        ["bad.pt", "unknown key 'notes'"],
        edited_checkpoint(lambda raw: raw.__setitem__("notes", "hi")),
    ),
    Case(
        "model spec with an extra field",
        [*PREDICT[:2], "checkpoint=bad.pt"],
        ["bad.pt", "cannot build", "unknown field 'dropout'"],
        edited_checkpoint(set_model("dropout", 0.1)),
    ),
    Case(
        "model depth as a float",
        [*PREDICT[:2], "checkpoint=bad.pt"],
        ["bad.pt", "model.depth=2.0 is float, not an integer"],
        edited_checkpoint(set_model("depth", 2.0)),
    ),
    Case(
        "spec claiming a huge network",
        [*PREDICT[:2], "checkpoint=bad.pt"],
        ["bad.pt", "cannot build", "at most 4096"],
        edited_checkpoint(set_model("base_channels", 100_000)),
    ),
    Case(
        "tensor of an edited size",
        [*PREDICT[:2], "checkpoint=bad.pt"],
        ["bad.pt", "state_dict['outc.weight'] has shape [2, 4, 1, 1]", "needs [1, 4, 1, 1]"],
        edited_checkpoint(lambda raw: raw["state_dict"].__setitem__("outc.weight", torch.zeros(2, 4, 1, 1))),
    ),
    Case(
        "NaN weight",
        [*PREDICT[:2], "checkpoint=bad.pt"],
        ["bad.pt", "state_dict['inc.0.weight'] holds NaN or infinite values"],
        edited_checkpoint(nan_weight),
    ),
    Case(
        "class names that do not fit the network",
        [*PREDICT[:2], "checkpoint=bad.pt"],
        ["bad.pt", "3 class names but model.num_classes=1 needs 2"],
        edited_checkpoint(lambda raw: raw.__setitem__("class_names", ["a", "b", "c"])),
    ),
    Case(
        "missing weight",
        [*PREDICT[:2], "checkpoint=bad.pt"],
        ["bad.pt", "it lacks 'outc.bias'"],
        edited_checkpoint(lambda raw: raw["state_dict"].pop("outc.bias")),
    ),
    Case(
        "NaN threshold",
        [*PREDICT[:2], "checkpoint=bad.pt"],
        ["bad.pt", "threshold=nan"],
        edited_checkpoint(lambda raw: raw.__setitem__("threshold", math.nan)),
    ),
    Case(
        "damaged checkpoint in export",
        ["export", "checkpoint=bad.pt", "format=torchscript"],
        ["bad.pt", "it lacks 'outc.bias'"],
        edited_checkpoint(lambda raw: raw["state_dict"].pop("outc.bias")),
    ),
    Case(
        "damaged checkpoint in evaluate",
        ["evaluate", "checkpoint=bad.pt", "input={ws}/d/image", "labels={ws}/d/label"],
        ["bad.pt", "holds NaN or infinite values"],
        edited_checkpoint(nan_weight),
    ),
    # hostile paths and files (found by trying them)
    Case(
        "checkpoint is a link to itself",
        [*PREDICT[:2], "checkpoint=self.pt"],
        ["self.pt is a symbolic link that leads back to itself"],
        lambda here, ws: (here / "self.pt").symlink_to("self.pt"),
    ),
    Case("checkpoint is a device", [*PREDICT[:2], "checkpoint=/dev/null"], ["/dev/null is not a regular file"]),
    Case(
        "a folder where a mask goes",
        [*PREDICT, "output=masks", "overwrite=true"],
        ["masks/0.png is a folder where an output file goes"],
        write("masks/0.png/keep.txt", b"a folder, not a mask"),
    ),
    Case(
        "complex pixels",
        ["predict", "input=p", "checkpoint={ws}/good.pt", "output=masks"],
        ["c.tif has complex pixels (complex64)"],
        lambda here, ws: (here / "p").mkdir() or tifffile.imwrite(here / "p" / "c.tif", np.zeros((8, 8), np.complex64)),
    ),
    Case(
        "a TIFF without pages",
        ["predict", "input=p/z.tif", "checkpoint={ws}/good.pt", "output=masks"],
        ["z.tif is a TIFF without pages"],
        write("p/z.tif", b"II*\0\0\0\0\0"),
    ),
    Case(
        "a broken link among the inputs",
        ["predict", "input=p/image", "checkpoint={ws}/good.pt", "output=masks"],
        ["z.png is a broken or looping link"],
        several(
            lambda here, ws: write_dataset(here / "p", count=2, size=32),
            lambda here, ws: (here / "p" / "image" / "z.png").symlink_to("/nonexistent/z.png"),
        ),
    ),
    Case(
        "a run folder in the image folder",
        ["train", *DATA, "hydra.run.dir=d/image"],
        ["is among the training data (data.root=d)"],
        data,
    ),
    Case(
        "run folder is a file",
        ["train", *TINY, "hydra.run.dir=afile"],
        ["afile is a file, not a folder"],
        write("afile", b"x"),
    ),
    # predict
    Case("input is the data root", ["predict", "input={ws}/d"], ["no images", "use input={ws}/d/image"]),
    Case("glob without matches", ["predict", "input=nothing/*.tif"], ["input=nothing/*.tif matches no images"]),
    Case(
        "input without images",
        ["predict", "input=nothing"],
        ["no images", "nothing"],
        write("nothing/readme.txt", b"no images here"),
    ),
    Case("output inside the input", [*PREDICT, "output={ws}/d/image/masks"], ["inside the input folder"]),
    Case("output is the input", [*PREDICT, "output={ws}/d/image"], ["inside the input folder"]),
    Case(
        "output would overwrite a mask",
        [*PREDICT, "output=masks"],
        ["masks", "already exist", "overwrite=true"],
        write("masks/0.png", b"an earlier mask"),
    ),
    Case(
        "a corrupt input among good ones",
        ["predict", "input=p/image", "checkpoint={ws}/good.pt", "output=masks"],
        ["2.png", "corrupt"],
        several(lambda here, ws: write_dataset(here / "p", count=3, size=32), write("p/image/2.png", b"not an image")),
    ),
    Case(
        "decompression bomb input",
        ["predict", "input=p", "checkpoint={ws}/good.pt", "output=masks"],
        ["big.tif claims 100000×100000 pixels", "max_pixels"],
        lambda here, ws: (here / "p").mkdir() or bomb_tiff(here / "p" / "big.tif"),
    ),
    Case(
        "NaN page in a stack",
        ["predict", "input=p", "checkpoint={ws}/good.pt", "output=masks"],
        ["page 2/3 of", "stack.tif has a non-finite value (nan) at pixel (y=4, x=9)"],
        float_tiff("p/stack.tif", math.nan, (3, 32, 32), (1, 4, 9)),
    ),
    Case(
        "export over an existing file",
        ["export", "checkpoint={ws}/good.pt", "format=torchscript", "output=model.pt"],
        ["model.pt already exists", "overwrite=true"],
        write("model.pt", b"an earlier export"),
    ),
    # evaluate
    Case(
        "inf in a label",
        ["evaluate", "checkpoint={ws}/good.pt", "input={ws}/d/image", "labels=labels"],
        ["3.tif has a non-finite value (inf) at pixel (y=5, x=6)"],
        several(
            lambda here, ws: (here / "labels").mkdir(),
            lambda here, ws: [
                cv2.imwrite(str(here / "labels" / f"{i}.png"), cv2.imread(str(ws / "d" / "label" / f"{i}.png")))
                for i in range(3)
            ],
            float_tiff("labels/3.tif", math.inf, at=(5, 6)),
        ),
    ),
    Case(
        "evaluate with a missing label folder",
        ["evaluate", "checkpoint={ws}/good.pt", "input={ws}/d/image", "labels=nowhere"],
        ["nowhere", "does not exist"],
    ),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared and never changed by a case: a good data set (d/) and a good (untrained) checkpoint."""
    ws = tmp_path_factory.mktemp("workspace")
    write_dataset(ws / "d", count=4, size=32)
    torch.manual_seed(0)
    save_checkpoint(
        Checkpoint(build_network(SPEC).state_dict(), SPEC, PercentileNormalizer(1, 99), ["bg", "fg"], 0.5, 1, {}),
        ws / "good.pt",
    )
    return ws


def snapshot(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every file (size, modification time) and folder under ``folder``."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None
        for path in folder.rglob("*")
    }


def test_the_table_covers_every_kind_of_input() -> None:
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)
    commands = {case.args[0] for case in CASES}
    assert commands >= {"train", "predict", "evaluate", "export"}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, workspace: Path, tmp_path: Path) -> None:
    here = tmp_path / "case"
    here.mkdir()
    if case.make is not None:
        case.make(here, workspace)
    before, shared = snapshot(here), snapshot(workspace)

    def fill(text: str) -> str:
        return text.replace("{ws}", str(workspace)).replace("{here}", str(here))

    result = run_cli(*[fill(arg) for arg in case.args], cwd=here)
    assert_one_line_error(result, *[fill(fragment) for fragment in case.fragments])
    assert result.returncode == 2
    assert "HOSTILE CODE RAN" not in result.stdout + result.stderr
    assert snapshot(here) == before  # nothing new (the run folder was removed), nothing changed
    assert snapshot(workspace) == shared


def test_a_missing_data_folder_starts_no_logger(tmp_path: Path) -> None:
    result = run_cli(
        "train", "data=isbi", "data.root=nowhere", *TINY, "trainer.loggers=[tensorboard,mlflow]", cwd=tmp_path
    )
    assert_one_line_error(result, "nowhere", "does not exist")
    assert not (tmp_path / "mlruns").exists()  # the loggers start only once the data has loaded
    assert list(tmp_path.iterdir()) == []


def test_instance_map_label_is_accepted_when_declared(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", count=4, size=32)
    cv2.imwrite(str(root / "label" / "0.png"), (np.arange(32 * 32) % 5).astype(np.uint8).reshape(32, 32))
    result = run_cli("train", "data=isbi", f"data.root={root}", "data.label_encoding=instance", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_failing_predict_sweep_job_sets_the_exit_code(tmp_path: Path) -> None:
    images = write_dataset(tmp_path / "d", count=2, size=32) / "image"
    result = run_cli("predict", "-m", f"input={images},missing", "checkpoint=nope.pt", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
