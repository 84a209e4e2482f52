"""penalty.decoder_gradient, RAE-GP's gradient penalty (Ghosh et al. 2020): lambda ||dD(z)/dz||_F^2 at
the codes. Known values: for a linear decoder D(z) = W z + b it is ||W||_F^2 at every code; through a
nonlinear decoder it equals central finite differences; it enters the loss times its weight; a weight
of 0 removes the part (and its cost), so a vmapped sweep groups the runs with it apart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx

from aeflax import objectives, parts, training
from aeflax.config import ConfigError, validate
from aeflax.parts.penalty.decoder_gradient import decoder_jacobian_sq

X = jax.random.uniform(jax.random.key(0), (6, 28, 28, 1))


def _model(*overrides):
    cfg = make_cfg("bottleneck.code_size=5", *overrides)
    return cfg, nnx.jit(lambda: training.make_model(cfg, (28, 28, 1), 0))()


def test_for_a_linear_decoder_the_penalty_is_the_squared_frobenius_norm_of_its_kernel():
    _, model = _model("model.output_activation=linear")
    z = 3 * jax.random.normal(jax.random.key(1), (4, 5))
    kernel = np.asarray(model.decoder.layers[-1].kernel[...], np.float64)  # D(z) = z W + b, W [5, 784]
    expected = np.full(4, np.sum(kernel**2))
    np.testing.assert_allclose(nnx.jit(decoder_jacobian_sq)(model, z), expected, rtol=1e-5)


def test_through_a_nonlinear_decoder_it_equals_finite_differences():
    _, model = _model("model.hidden=[16]", "model.activation=tanh")
    z = jax.random.normal(jax.random.key(2), (3, 5))
    eps = 1e-2
    decode = nnx.jit(lambda m, z: m.decode(z).reshape(len(z), -1))
    columns = [(decode(model, z + eps * e) - decode(model, z - eps * e)) / (2 * eps) for e in jnp.eye(5)]
    expected = sum(np.sum(np.asarray(c, np.float64) ** 2, axis=-1) for c in columns)
    np.testing.assert_allclose(nnx.jit(decoder_jacobian_sq)(model, z), expected, rtol=1e-3)


def test_it_enters_the_loss_times_its_weight_and_a_zero_weight_removes_it():
    cfg, model = _model("penalty.decoder_gradient=0.25")
    plain = make_cfg("bottleneck.code_size=5")
    hp = training.hyperparameters(cfg, 1)
    loss, metrics = nnx.jit(lambda m: objectives.loss_and_metrics(m, X, X, jax.random.key(1), hp, cfg))(model)
    base, _ = nnx.jit(lambda m: objectives.loss_and_metrics(m, X, X, jax.random.key(1), hp, plain))(model)
    value = np.mean(nnx.jit(decoder_jacobian_sq)(model, model.encode(X)["code"]))
    np.testing.assert_allclose(metrics["decoder_gradient"], value, rtol=1e-5)
    np.testing.assert_allclose(loss - base, 0.25 * value, rtol=1e-4)
    assert "decoder_gradient" in parts.active_names(cfg)["penalty"]
    assert "decoder_gradient" not in parts.active_names(plain)["penalty"]
    assert "decoder_gradient" not in training.hyperparameters(plain, 1)


def test_a_negative_weight_is_refused():
    with pytest.raises(ConfigError, match="penalty.decoder_gradient=-0.1 must be >= 0"):
        validate(make_cfg("penalty.decoder_gradient=-0.1"))
