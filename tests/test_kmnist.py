"""data=kmnist, the worked example of docs/extending.md (a dataset): the config file composes and
validates, and tfds' kmnist builder flows through aeflax.data (mock examples: there is no network
here, so the real images are not tested)."""

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from aeflax import data
from aeflax.config import DataConfig, validate
from experiments.schema import register

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_data_kmnist_composes_and_validates():
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["data=kmnist", "data.train_limit=100"])
    assert cfg.data.name == "kmnist" and cfg.data.train_limit == 100
    validate(cfg)


def test_kmnist_loads_through_tfds_as_uint8_arrays(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data, "_reachable", lambda *a, **k: True)  # pretend to be online
    with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load(DataConfig(name="kmnist", data_dir=str(tmp_path)))
    assert ds.image_shape == (28, 28, 1) and ds.train.images.dtype == np.uint8
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    assert ds.test.labels.dtype == np.int32 and 0 <= ds.test.labels.min() <= ds.test.labels.max() < 10
