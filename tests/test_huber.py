"""loss=huber, the worked example of docs/extending.md (a loss with a traced weight): known values,
its threshold read from `hp` in training and evaluation (one vmapped program per sweep), training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg

from aeflax import training, vmap_sweep
from aeflax.config import ConfigError, traced_fields, validate
from aeflax.parts.loss.huber import huber


def test_huber_is_half_the_squared_error_below_delta_and_linear_beyond():
    x = jnp.zeros((2, 4, 4, 1))
    small = jnp.full_like(x, 0.05)  # |e| < delta: e^2 / 2
    np.testing.assert_allclose(huber(small, x, 0.1), [0.05**2 / 2] * 2, rtol=1e-6)
    big = jnp.full_like(x, 0.5)  # |e| > delta: delta (|e| - delta / 2), the slope is delta
    np.testing.assert_allclose(huber(big, x, 0.1), [0.1 * (0.5 - 0.05)] * 2, rtol=1e-6)
    np.testing.assert_allclose(huber(-big, x, 0.1), huber(big, x, 0.1))  # symmetric


def test_delta_is_traced_and_a_sweep_over_it_is_one_program():
    assert "loss.delta" in traced_fields()
    cfgs = [make_cfg("loss.name=huber", f"loss.delta={d}") for d in (0.05, 0.1, 0.5)]
    assert training.hyperparameters(cfgs[0], 1)["huber_delta"] == np.float32(0.05)
    assert vmap_sweep.group_configs([*cfgs, make_cfg()]) == [[0, 1, 2], [3]]  # mse: another program
    with pytest.raises(ConfigError, match=r"loss.delta=0.0 must be > 0"):
        validate(make_cfg("loss.name=huber", "loss.delta=0"))


def test_huber_trains_and_its_evaluation_reads_delta_from_hp(fmnist_small):
    cfg = make_cfg("loss.name=huber", "train.epochs=2")
    result = training.fit(cfg, fmnist_small, progress=False)
    first, last = result.history
    assert last["train/loss"] < first["train/loss"] and last["test/loss"] < first["test/loss"]
    test = fmnist_small.test
    evaluate = jax.jit(training.make_evaluate(result.graphdef, cfg, len(test), "test"))
    hp = training.hyperparameters(cfg, 1)
    at = lambda delta: evaluate(result.state, test.images, {**hp, "huber_delta": jnp.float32(delta)})  # noqa: E731
    m = at(1.0)  # pixel errors are below 1: Huber with delta 1 is MSE / 2 (cfg says 0.1: hp wins)
    np.testing.assert_allclose(m["test/loss"], m["test/mse"] / 2, rtol=1e-5)
    np.testing.assert_allclose(at(0.1)["test/loss"], last["test/loss"], rtol=1e-6)
