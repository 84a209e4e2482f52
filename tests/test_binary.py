"""bottleneck=binary, the worked example of docs/extending.md (a bottleneck): the code is exactly
0/1, gradients pass straight through the rounding, penalties that need a smooth code refuse it,
and it trains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx

from aeflax import training
from aeflax.config import ConfigError, validate
from aeflax.parts.bottleneck.binary import Binary


def test_the_code_is_exactly_zero_or_one_and_gradients_pass_straight_through():
    layer = Binary(20, 16, nnx.Rngs(0))
    h = jax.random.normal(jax.random.key(1), (8, 20))
    w = jax.random.normal(jax.random.key(2), (8, 16))
    grad = lambda key: jax.grad(lambda h: jnp.sum(w * layer(h)[key]))(h)  # noqa: E731
    out, through_code, through_sigmoid = jax.jit(lambda: (layer(h), grad("code"), grad("probs")))()
    code = np.asarray(out["code"])
    assert set(np.unique(code)) == {0.0, 1.0}
    np.testing.assert_array_equal(code, np.asarray(out["probs"]) > 0.5)
    assert np.all(np.asarray(through_code) != 0)  # the sigmoid's gradient is what straight-through passes
    np.testing.assert_allclose(through_code, through_sigmoid, rtol=1e-6)


@pytest.mark.parametrize("penalty", ["contractive", "l1_activity", "kl_sparsity"])
def test_penalties_that_need_a_smooth_or_sigmoid_code_refuse_it(penalty):
    validate(make_cfg("bottleneck.kind=binary"))
    with pytest.raises(ConfigError, match=f"penalty.{penalty}"):
        validate(make_cfg("bottleneck.kind=binary", f"penalty.{penalty}=0.1"))


def test_a_binary_autoencoder_trains(fmnist_small):
    cfg = make_cfg("bottleneck.kind=binary", "train.epochs=2")
    first, last = training.fit(cfg, fmnist_small, progress=False).history
    assert last["train/loss"] < first["train/loss"] and last["test/loss"] < first["test/loss"]
    assert 0 < last["test/active_fraction"] < 1  # bits on and off, not a constant code
