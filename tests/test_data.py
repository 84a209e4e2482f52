"""Data: the real Fashion-MNIST arrays, subsets, splits, and the tfds path under mocking."""

import numpy as np
import pytest

from aeflax import data
from aeflax.config import DataConfig


def test_fashion_mnist_is_the_real_dataset(fmnist):
    assert fmnist.train.images.shape == (60000, 28, 28, 1)
    assert fmnist.test.images.shape == (10000, 28, 28, 1)
    assert fmnist.train.images.dtype == np.uint8
    assert fmnist.num_classes == 10 and fmnist.class_names[9] == "Ankle boot"
    assert np.bincount(fmnist.train.labels).tolist() == [6000] * 10  # balanced, as published
    assert np.bincount(fmnist.test.labels).tolist() == [1000] * 10
    assert 72 < fmnist.train.images.mean() < 73.5  # the known mean pixel (72.94 / 255 = 0.286)


def test_limits_validation_and_one_class():
    ds = data.load(DataConfig(val_size=10000, train_limit=300, test_limit=200))
    assert len(ds.train) == 300 and len(ds.test) == 200 and len(ds.val) == 200
    assert ds.eval_split[0] == "val"
    full = data.load(DataConfig())
    np.testing.assert_array_equal(ds.val.images, full.train.images[50000:50200])  # carved from the end
    one = data.load(DataConfig(normal_class=3))
    assert set(one.train.labels.tolist()) == {3} and len(one.train) == 6000
    assert len(set(one.test.labels.tolist())) == 10  # test keeps every class


@pytest.mark.slow
def test_static_binarization_is_fixed_and_binary():
    a = data.load(DataConfig(binarize="static", test_limit=100))
    b = data.load(DataConfig(binarize="static", test_limit=100))
    assert set(np.unique(a.test.images).tolist()) <= {0, 255}
    np.testing.assert_array_equal(a.test.images, b.test.images)


def test_tfds_path_under_mock_data(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data, "_reachable", lambda *a, **k: True)  # pretend to be online
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load(DataConfig(name="mnist", data_dir=str(tmp_path)))
    assert ds.train.images.shape == (40, 28, 28, 1) and ds.train.images.dtype == np.uint8
    assert ds.num_classes == 10
    # the arrays were kept: a second load reads them without tfds
    again = data.load(DataConfig(name="mnist", data_dir=str(tmp_path)))
    np.testing.assert_array_equal(again.test.images, ds.test.images)


def test_unavailable_dataset_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_reachable", lambda *a, **k: False)
    with pytest.raises(data.DataError, match="mnist.*not prepared.*cannot be reached.*prepare_data.py"):
        data.load(DataConfig(name="mnist", data_dir=str(tmp_path)))
    with pytest.raises(data.DataError, match="unknown dataset 'no_such_set'"):
        data.load(DataConfig(name="no_such_set", data_dir=str(tmp_path)))
