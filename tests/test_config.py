"""Every config option composes against the schema, and the range checks catch bad values."""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from unetseg.checks import CHECKS
from unetseg.config import register_schemas, to_typed
from unetseg.runtime.errors import UserError
from unetseg.runtime.paths import config_dir, register_resolvers


@contextmanager
def composing() -> Iterator[None]:
    register_resolvers()
    register_schemas()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        yield


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=transposed"],
        ["optim=adam"],
        ["optim=sgd"],
        ["data=isbi", "data.root=x"],
        ["data=folder", "data.root=x"],
        ["experiment=quickstart"],
    ],
)
def test_options_compose_with_every_value_set(overrides: list[str]) -> None:
    with composing():
        cfg = compose("train", overrides=overrides)
    assert not OmegaConf.missing_keys(cfg)
    CHECKS["train"](to_typed(cfg))


def test_classic_defaults() -> None:
    with composing():
        cfg = compose("train")
    assert (cfg.model.upsampling, cfg.model.base_channels, cfg.model.depth) == ("bilinear", 64, 4)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("rmsprop", 1e-5, 0.9, 1e-8)
    assert cfg.trainer.loss == "bce" and cfg.trainer.device == "auto"
    assert cfg.data.source == "synthetic"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=-1"], "optim.lr"),
        (["data.val_fraction=1"], "data.val_fraction"),
        (["data.val_fraction=0"], "data.val_fraction"),
        (["trainer.epochs=0"], "trainer.epochs"),
        (["trainer.device=tpu"], "trainer.device"),
        (["data=isbi"], "data.root is not set"),
        (["model.num_classes=3"], "data.class_names"),
    ],
)
def test_range_checks(overrides: list[str], message: str) -> None:
    with composing():
        cfg = compose("train", overrides=overrides)
    with pytest.raises(UserError, match=message):
        CHECKS["train"](to_typed(cfg))


def test_predict_and_synthesize_need_their_paths() -> None:
    with composing():
        predict_cfg = compose("predict")
        synth_cfg = compose("synthesize")
    with pytest.raises(UserError, match="input is not set"):
        CHECKS["predict"](to_typed(predict_cfg))
    with pytest.raises(UserError, match="output is not set"):
        CHECKS["synthesize"](to_typed(synth_cfg))
