"""Shared fixtures: small real Fashion-MNIST subsets and configs built from dotlists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aeflax import runtime
from aeflax.config import Config

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
runtime.configure()  # as the entry points do, before the tests' first JAX computation


def make_cfg(*overrides: str) -> Config:
    """The seed config with `key=value` overrides, W&B disabled, no figures."""
    from aeflax.api import seed_config

    return seed_config("logger.mode=disabled", "eval.figures=false", *overrides)


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
