"""Shared fixtures: small real Fashion-MNIST subsets and configs built from dotlists."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from aeflax.config import Config  # noqa: E402


def make_cfg(*overrides: str, **data_overrides):
    """The seed config with `key=value` overrides, W&B disabled, no figures."""
    cfg = OmegaConf.structured(Config)
    cfg.logger.mode = "disabled"
    cfg.eval.figures = False
    cfg.merge_with_dotlist(list(overrides))
    return cfg


@pytest.fixture(scope="session")
def fmnist():
    """Full Fashion-MNIST arrays (prepared from Debian's files on first use)."""
    from aeflax import data
    from aeflax.config import DataConfig

    return data.load(DataConfig())


@pytest.fixture(scope="session")
def fmnist_small():
    """2000 train / 500 test real Fashion-MNIST images: enough to see learning, fast."""
    from aeflax import data
    from aeflax.config import DataConfig

    return data.load(DataConfig(train_limit=2000, test_limit=500))
