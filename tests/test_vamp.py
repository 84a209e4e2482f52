"""bottleneck=vamp (Tomczak & Welling 2018): the prior is a mixture of posteriors at learned
pseudo-inputs. Known values: with one pseudo-input it is that one Gaussian (log density, KL in
closed form between the two Gaussians, samples); the IWAE bound with k = 1 is the ELBO of the
same draw; it trains on real images, and the importance-sampled NLL uses it."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx

from aeflax import evaluation, objectives, training
from aeflax.parts import bottleneck_of
from aeflax.parts.bottleneck.gaussian import importance_log_weights
from aeflax.parts.bottleneck.vamp import log_mixture
from aeflax.parts.loss.iwae import iwae_bound

X = jax.random.uniform(jax.random.key(0), (6, 28, 28, 1))


def _model(*overrides):
    cfg = make_cfg("bottleneck.kind=vamp", "bottleneck.code_size=3", "loss.name=elbo", *overrides)
    return cfg, nnx.jit(lambda: training.make_model(cfg, (28, 28, 1), 0))()


def test_a_mixture_of_one_or_two_gaussians_is_their_density():
    z = jax.random.normal(jax.random.key(1), (7, 4, 3))
    means = jnp.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]])
    logvars = jnp.array([[0.2, -1.0, 0.5], [1.0, 0.0, -2.0]])
    one = objectives.log_normal(z, means[0], logvars[0])
    np.testing.assert_allclose(log_mixture(z, means[:1], logvars[:1]), one, rtol=1e-5)
    two = np.log(0.5 * np.exp(one) + 0.5 * np.exp(objectives.log_normal(z, means[1], logvars[1])))
    np.testing.assert_allclose(log_mixture(z, means, logvars), two, rtol=1e-5)


def test_one_pseudo_input_is_a_single_gaussian_prior():
    """KL(q(z|x) || p) by the ELBO's single-sample estimate matches the closed form between the
    posterior and the pseudo-input's posterior; prior samples have its mean and std."""
    cfg, model = _model("bottleneck.pseudo_inputs=1")
    part = model.bottleneck
    mu_u, logvar_u = (np.asarray(a[0], np.float64) for a in nnx.jit(lambda b: b.prior_stats())(part))
    x = X[:2]
    n = 100_000

    @nnx.jit
    def estimates(model, key):
        outs = jax.vmap(lambda k: model(x, key=k))(jax.random.split(key, n))
        kl = jax.vmap(bottleneck_of(cfg).kl)(outs)  # [n, B]
        return kl, outs["mean"][0], outs["logvar"][0]

    kl, mean, logvar = estimates(model, jax.random.key(2))
    mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    ratio = (np.exp(logvar) + (mean - mu_u) ** 2) / np.exp(logvar_u)
    closed = 0.5 * np.sum(logvar_u - logvar + ratio - 1, -1)  # KL(N(mean, var) || N(mu_u, var_u))
    mc, stderr = np.mean(kl, 0), np.std(kl, 0) / math.sqrt(n)
    assert np.all(np.abs(mc - closed) < 4 * stderr), (mc, closed, stderr)
    z = np.asarray(nnx.jit(lambda m: m.bottleneck.prior_sample(jax.random.key(3), 50_000))(model), np.float64)
    np.testing.assert_allclose(z.mean(0), mu_u, atol=4 * np.exp(logvar_u / 2).max() / math.sqrt(50_000))
    np.testing.assert_allclose(z.std(0), np.exp(logvar_u / 2), rtol=0.02)


@pytest.mark.slow
def test_iwae_with_one_sample_is_the_vamp_elbo_of_the_same_draw():
    cfg, model = _model("bottleneck.pseudo_inputs=5")

    @nnx.jit
    def bounds(model, key):
        out = model(X, key=key)
        elbo = objectives.bernoulli_log_likelihood(out["logits"], X) - bottleneck_of(cfg).kl(out)
        return elbo, iwae_bound(importance_log_weights(model, X, key, 1, "bernoulli"))

    elbo, iwae = bounds(model, jax.random.key(4))
    np.testing.assert_allclose(iwae, elbo, rtol=1e-5)


def test_pseudo_inputs_are_learned_parameters_that_share_the_encoder():
    _, model = _model("bottleneck.pseudo_inputs=4")
    assert model.bottleneck.encoder is model.encoder  # the prior reads the model's own encoder
    assert model.bottleneck.pseudo_inputs[...].shape == (4, 28, 28, 1)
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m.bottleneck.log_prior(jnp.ones((2, 3))))))(model)
    assert float(jnp.abs(grads.bottleneck.pseudo_inputs[...]).sum()) > 0


@pytest.mark.slow
def test_a_vamp_vae_trains_and_its_nll_uses_the_prior(fmnist_small):
    cfg = make_cfg("bottleneck.kind=vamp", "bottleneck.code_size=16", "bottleneck.pseudo_inputs=50",
                   "loss.name=elbo", "model.hidden=[256]", "train.epochs=2", "eval.importance_samples=20")
    result = training.fit(cfg, fmnist_small, progress=False)
    first, last = result.history
    assert last["train/loss"] < first["train/loss"] and last["test/loss"] < first["test/loss"]
    nll = evaluation.likelihood_nll(cfg, result.model, result.state, fmnist_small.test.images[:100])
    assert np.all(np.isfinite(nll)) and 0 < np.mean(nll) < -last["test/elbo"] + 5  # IS tightens the bound
    images = evaluation.sample_codes(cfg, result.model, None, jax.random.key(0), 4)
    assert images.shape == (4, 16)
