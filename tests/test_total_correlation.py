"""penalty.tc, beta-TCVAE (Chen et al. 2018): the KL's decomposition into index-code MI, total
correlation and dimension-wise KL (both minibatch estimators), the weight traced, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg

from aeflax import objectives, training
from aeflax.config import ConfigError, traced_fields, validate
from aeflax.parts.penalty import total_correlation
from aeflax.parts.penalty.total_correlation import log_q_pairs, log_weights

decomposition = jax.jit(total_correlation.decomposition, static_argnames="estimator")  # one program


def posterior_batch(n=1000, d=3, seed=0, duplicate=False, logvar=None):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    mean = jax.random.normal(k1, (n, d))
    if duplicate:  # every dimension the same: a maximally dependent aggregate posterior
        mean = jnp.repeat(mean[:, :1], d, axis=1)
    if logvar is None:
        logvar = jax.random.uniform(k2, (n, d), minval=-2.0, maxval=0.0)
    logvar = jnp.broadcast_to(logvar, (n, d))
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(k3, (n, d)), mean, logvar


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_mi_tc_and_dimwise_kl_sum_to_the_kl(estimator):
    z, mean, logvar = posterior_batch()
    parts = decomposition(z, mean, logvar, 60000, estimator)
    one_sample_kl = objectives.log_normal(z, mean, logvar) - objectives.log_normal(z, 0 * z, 0 * z)
    np.testing.assert_allclose(sum(parts), jnp.mean(one_sample_kl), rtol=1e-4)  # exactly, by construction
    analytic = objectives.kl_standard_normal(mean, logvar)  # and the KL term within the sampling error
    assert abs(float(sum(parts) - jnp.mean(analytic))) < 4 * float(jnp.std(one_sample_kl)) / np.sqrt(len(z))


def test_the_stratified_total_correlation_is_zero_for_independent_dimensions_and_large_for_copies():
    _, tc_independent, _ = decomposition(*posterior_batch(logvar=np.log(0.25)), 1000, "mss")
    _, tc_copies, _ = decomposition(*posterior_batch(logvar=np.log(0.25), duplicate=True), 1000, "mss")
    assert abs(float(tc_independent)) < 0.1 and float(tc_copies) > 0.5, (tc_independent, tc_copies)


def test_the_estimators_weights():
    w = np.exp(np.asarray(log_weights(5, 100, "mss")))
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)  # stratified: a distribution per row
    np.testing.assert_allclose(np.diag(w), 1 / 100, rtol=1e-6)
    np.testing.assert_allclose(np.exp(np.asarray(log_weights(5, 100, "mws"))), 1 / 500, rtol=1e-6)
    z, mean, logvar = posterior_batch(n=4, d=2)
    pairs = log_q_pairs(z, mean, logvar)  # one pair by hand: log N(z_10; mean_20, exp(logvar_20))
    by_hand = -0.5 * (np.log(2 * np.pi) + logvar[2, 0] + (z[1, 0] - mean[2, 0]) ** 2 / np.exp(logvar[2, 0]))
    np.testing.assert_allclose(pairs[1, 2, 0], by_hand, rtol=1e-5)


def test_tc_is_traced_and_needs_a_gaussian_posterior():
    assert "penalty.tc" in traced_fields()
    cfg = make_cfg("bottleneck.kind=gaussian", "loss.name=elbo", "penalty.tc=5")
    validate(cfg)
    hp = training.hyperparameters(cfg, 10)
    assert hp["tc"] == np.float32(5) and hp["tc_dataset_size"] == np.float32(10 * cfg.train.batch_size)
    with pytest.raises(ConfigError, match="penalty.tc needs a diagonal Gaussian"):
        validate(make_cfg("penalty.tc=5"))
    with pytest.raises(ConfigError, match="penalty.tc_estimator"):
        validate(make_cfg("penalty.tc_estimator=exact"))


@pytest.mark.slow
def test_beta_tcvae_trains_on_fashion_mnist(fmnist_small):
    from test_variants import _compose

    cfg = _compose("variant=beta_tcvae", "train.epochs=2", "eval.figures=false")
    validate(cfg)
    first, last = training.fit(cfg, fmnist_small, progress=False).history
    assert last["train/loss"] < first["train/loss"] and last["test/loss"] < first["test/loss"]
    split = last["train/mi"] + last["train/tc"] + last["train/dimwise_kl"]  # the epoch's mean KL, estimated
    assert abs(split - last["train/kl"]) < 0.1 * last["train/kl"], last
