"""The seed autoencoder: shapes, learning on real data, determinism."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg

from aeflax import training


def test_seed_model_is_the_tutorials(fmnist_small):
    cfg = make_cfg()
    model = training.make_model(cfg, (28, 28, 1), 0)
    out = model(jnp.zeros((3, 28, 28, 1)))
    assert out["code"].shape == (3, 64)
    assert out["recon"].shape == (3, 28, 28, 1)
    # Flatten -> Dense(64) -> Dense(784): exactly two kernels and two biases
    assert model.bottleneck.linear.kernel.value.shape == (784, 64)
    assert model.decoder.layers[0].kernel.value.shape == (64, 784)
    assert float(out["recon"].min()) >= 0 and float(out["recon"].max()) <= 1


def test_loss_falls_on_real_data(fmnist_small):
    cfg = make_cfg("train.epochs=5", "train.batch_size=32")
    result = training.fit(cfg, fmnist_small, progress=False)
    losses = [h["test/mse"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0], losses
    assert losses[-1] < 0.035


@pytest.mark.slow
def test_same_seed_same_numbers(fmnist_small):
    cfg = make_cfg("train.epochs=2", "train.batch_size=128")
    a = training.fit(cfg, fmnist_small, progress=False).history
    b = training.fit(cfg, fmnist_small, progress=False).history
    strip = lambda h: {k: v for k, v in h.items() if "seconds" not in k}  # noqa: E731
    assert [strip(h) for h in a] == [strip(h) for h in b]
    c = training.fit(make_cfg("train.epochs=2", "train.batch_size=128", "seed=1"),
                     fmnist_small, progress=False).history
    assert not np.isclose(c[-1]["test/mse"], a[-1]["test/mse"], rtol=1e-6)
