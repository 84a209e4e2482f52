"""Every config file in conf/ composes against the structured schema and passes validation."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from aeflax.config import validate
from experiments.schema import register

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ["data", "model", "bottleneck", "loss", "noise", "penalty", "optimizer", "train", "logger", "eval"]

register()


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_seed_config_is_the_tutorials():
    cfg = _compose([])
    assert cfg.data.name == "fashion_mnist" and cfg.model.architecture == "dense"
    assert list(cfg.model.hidden) == [] and cfg.bottleneck.code_size == 64
    assert cfg.bottleneck.activation == "relu" and cfg.model.output_activation == "sigmoid"
    assert cfg.loss.name == "mse" and cfg.optimizer.name == "adam" and cfg.optimizer.learning_rate == 1e-3
    assert cfg.train.batch_size == 256 and cfg.train.epochs == 10 and cfg.logger.mode == "offline"
    validate(cfg)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_group_option_composes(group, option):
    cfg = _compose([f"{group}={option}"])
    assert OmegaConf.select(cfg, group) is not None


@pytest.mark.parametrize("name", _options("experiment"))
def test_experiment_composes_and_validates(name):
    cfg = _compose([f"experiment={name}"])
    validate(cfg)  # an experiment file must be a valid combination


@pytest.mark.parametrize("name", _options("variant"))
def test_variant_composes_and_validates(name):
    cfg = _compose([f"variant={name}"])
    validate(cfg)  # a variant file must be a valid combination
    assert cfg.name == name


def test_experiment_with_a_variants_name_is_that_variant():
    """`experiment=<variant>`, the spelling from before conf/variant/, still works for every
    variant (experiments/schema.py) and gives the variant's config."""
    assert set(ConfigStore.instance().list("experiment")) == {f"{n}.yaml" for n in _options("variant")}
    for name in ("ae", "vae", "conv_denoising"):
        assert _compose([f"experiment={name}"]) == _compose([f"variant={name}"])


def test_a_name_is_a_variant_or_an_experiment_not_both():
    assert _options("variant") and _options("experiment")
    assert not set(_options("variant")) & set(_options("experiment"))
