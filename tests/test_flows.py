"""bottleneck=planar and bottleneck=iaf: flows on the VAE's posterior. Known values: a flow that
starts as the identity gives exactly the plain VAE's ELBO and IS weights (same encoder and
decoder weights); each flow's log-determinant equals autodiff's; IAF's Jacobian is triangular;
the IWAE bound with k = 1 is the ELBO of the same draw; both train on real images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx

from aeflax import evaluation, objectives, training
from aeflax.parts.bottleneck.gaussian import importance_log_weights
from aeflax.parts.bottleneck.iaf import IAFStep
from aeflax.parts.bottleneck.planar import planar_step

X = jax.random.uniform(jax.random.key(0), (6, 28, 28, 1))
SMALL = ("bottleneck.code_size=4", "loss.name=elbo", "model.hidden=[32]", "bottleneck.flow_hidden=16")


def _model(kind, *overrides):
    cfg = make_cfg(f"bottleneck.kind={kind}", *SMALL, *overrides)
    return cfg, nnx.jit(lambda: training.make_model(cfg, (28, 28, 1), 0))()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_a_flow_at_its_initial_identity_gives_exactly_the_plain_vae(kind):
    cfg, flow = _model(kind)
    vae_cfg, vae = _model("gaussian")
    for name in ("encoder", "decoder"):
        nnx.update(getattr(vae, name), nnx.state(getattr(flow, name)))
    for name in ("mean", "logvar"):
        nnx.update(getattr(vae.bottleneck, name), nnx.state(getattr(flow.bottleneck, name)))
    hp = training.hyperparameters(cfg, 1)

    @nnx.jit
    def terms(model, key):
        c = cfg if model is flow else vae_cfg
        t = objectives.eval_terms(model, X, X, key, c, hp)
        return t["elbo"], t["kl"], importance_log_weights(model, X, key, 3, "bernoulli")

    for a, b in zip(terms(flow, jax.random.key(1)), terms(vae, jax.random.key(1)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_planar_with_all_parameters_zero_is_the_identity():
    z = jax.random.normal(jax.random.key(1), (5, 4))
    out, logdet = planar_step(z, jnp.zeros(4), jnp.zeros(4), 0.0)
    np.testing.assert_array_equal(out, z)
    np.testing.assert_array_equal(logdet, np.zeros(5))


def test_planar_log_determinant_equals_autodiff():
    k = jax.random.split(jax.random.key(2), 4)
    u, w, z = (jax.random.normal(ki, (4,)) for ki in k[:3])
    u = u - 3 * w / jnp.sum(w**2)  # w . u < -1: the invertibility correction is active too
    flow = lambda z: planar_step(z, u, w, 0.3)  # noqa: E731
    logdet, jac = jax.jit(lambda z: (flow(z)[1], jax.jacfwd(lambda z: flow(z)[0])(z)))(z)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(np.asarray(jac, np.float64))[1], rtol=1e-5)
    assert np.linalg.slogdet(np.asarray(jac))[0] > 0  # invertible, orientation kept


@pytest.mark.slow
def test_iaf_step_is_autoregressive_and_its_log_determinant_equals_autodiff():
    step = IAFStep(5, 16, 3, reverse=True, rngs=nnx.Rngs(0), init="glorot_uniform")
    for p in (step.m, step.s, step.m_bias, step.s_bias):  # away from the identity it starts at
        p[...] = 0.3 * jax.random.normal(jax.random.key(3), p[...].shape)
    z, h = jax.random.normal(jax.random.key(4), (1, 5)), jax.random.normal(jax.random.key(5), (1, 3))
    _, logdet = step(z, h)
    jac = np.asarray(jax.jacfwd(lambda z: step(z[None], h)[0][0])(z[0]), np.float64)
    np.testing.assert_allclose(logdet[0], np.linalg.slogdet(jac)[1], rtol=1e-5)
    np.testing.assert_array_equal(np.tril(jac, -1), 0)  # reversed order: output i reads inputs > i only


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_a_flow_vae_trains_and_its_iwae_k1_is_its_elbo(kind, fmnist_small):
    cfg = make_cfg(f"bottleneck.kind={kind}", "bottleneck.code_size=8", "loss.name=elbo",
                   "model.hidden=[256]", "train.epochs=2", "eval.importance_samples=20")
    result = training.fit(cfg, fmnist_small, progress=False)
    first, last = result.history
    assert last["train/loss"] < first["train/loss"] and last["test/loss"] < first["test/loss"]
    model, x = result.model, jnp.asarray(fmnist_small.test.images[:50], jnp.float32) / 255.0
    out = model(x, key=jax.random.key(6))
    assert float(jnp.max(jnp.abs(out["logdet"]))) > 0  # the flow moved away from the identity
    elbo = objectives.bernoulli_log_likelihood(out["logits"], x) - (
        objectives.log_normal(out["z0"], out["mean"], out["logvar"]) - out["logdet"]
        - objectives.log_normal(out["code"], 0.0, 0.0))
    log_w = importance_log_weights(model, x, jax.random.key(6), 1, "bernoulli")[0]
    np.testing.assert_allclose(log_w, elbo, rtol=1e-5)
    nll = evaluation.likelihood_nll(cfg, model, result.state, fmnist_small.test.images[:100])
    assert np.all(np.isfinite(nll)) and 0 < np.mean(nll) < -last["test/elbo"] + 5
