"""penalty.dip_offdiag / dip_diag, DIP-VAE I and II (Kumar et al. 2018): the covariance penalty's known
values, the two covariances, the refusal without a Gaussian posterior, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg

from aeflax import training
from aeflax.config import ConfigError, traced_fields, validate
from aeflax.parts.penalty.dip import code_covariance, dip_penalty


def whitened(n=500, d=4, seed=0):
    """n codes whose batch covariance (1/n, centred) is exactly the identity."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    x -= x.mean(axis=0)
    evals, evecs = np.linalg.eigh(x.T @ x / n)
    return jnp.asarray(x @ evecs / np.sqrt(evals), jnp.float32)


def test_the_penalty_is_zero_for_the_identity_and_known_otherwise():
    assert float(dip_penalty(jnp.eye(3), 10.0, 100.0)) == 0.0
    cov = jnp.array([[1.0, 0.5], [0.5, 3.0]])
    np.testing.assert_allclose(dip_penalty(cov, 2.0, 10.0), 2.0 * 0.5 + 10.0 * 4.0, rtol=1e-6)


def test_dip_i_reads_the_means_and_dip_ii_adds_the_mean_variance():
    mean = whitened()
    np.testing.assert_allclose(code_covariance(mean, jnp.zeros_like(mean), "i"), np.eye(4), atol=1e-5)
    half = mean * np.sqrt(0.5)  # Cov(mean) = I / 2, and E[var] = 1 / 2: the aggregate has Cov = I
    cov = code_covariance(half, jnp.full_like(half, np.log(0.5)), "ii")
    np.testing.assert_allclose(cov, np.eye(4), atol=1e-5)
    assert float(dip_penalty(cov, 10.0, 10.0)) < 1e-8
    dip_i = code_covariance(half, jnp.zeros_like(half), "i")  # I / 2: 4 diagonal entries off by 1/2
    assert float(dip_penalty(dip_i, 1.0, 1.0)) == pytest.approx(1.0)


def test_dip_weights_are_traced_and_need_a_gaussian_posterior():
    assert {"penalty.dip_offdiag", "penalty.dip_diag"} <= set(traced_fields())
    cfg = make_cfg("bottleneck.kind=gaussian", "loss.name=elbo", "penalty.dip_offdiag=2")
    hp = training.hyperparameters(cfg, 1)
    assert hp["dip_offdiag"] == np.float32(2) and hp["dip_diag"] == np.float32(0)
    with pytest.raises(ConfigError, match="needs a diagonal Gaussian"):
        validate(make_cfg("penalty.dip_diag=1"))
    with pytest.raises(ConfigError, match="penalty.dip_kind"):
        validate(make_cfg("penalty.dip_kind=iii"))
    assert jax.numpy.isfinite(dip_penalty(jnp.zeros((2, 2)), 1.0, 1.0))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dip_vae", "dip_vae_ii"])
def test_dip_variants_train_on_fashion_mnist(variant, fmnist_small):
    from test_variants import _compose

    cfg = _compose(f"variant={variant}", "train.epochs=2", "eval.figures=false")
    validate(cfg)
    first, last = training.fit(cfg, fmnist_small, progress=False).history
    assert last["train/loss"] < first["train/loss"] and last["test/loss"] < first["test/loss"]
    assert last["train/dip"] < first["train/dip"], (first, last)
