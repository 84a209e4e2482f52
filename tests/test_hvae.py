"""bottleneck=hvae: the 2-level hierarchical VAE (Tomczak & Welling 2018), p(z2) standard or the
VampPrior. Known values: with linear networks, constant variances and a Gaussian likelihood the
model is linear-Gaussian (for the VampPrior a mixture of such), so log p(x) has a closed form that the
importance-sampled estimate must reach, and the ancestral samples have the moments of that
Gaussian (mixture); each layer's single-sample KL averages to its closed form (z2 to N(0, I); z1 to
KL(q(z1|x,z2) || p(z1|z2)) at the z2 drawn), and a z1 layer whose posterior is its conditional prior
adds exactly none; the IWAE bound with k = 1 is the ELBO of the same draw; it trains on real images."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from aeflax import evaluation, objectives, training
from aeflax.config import ConfigError, validate
from aeflax.parts import bottleneck_of

X = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
SMALL = ("bottleneck.kind=hvae", "bottleneck.code_size=3", "bottleneck.hierarchy_hidden=16",
         "bottleneck.pseudo_inputs=5", "loss.name=elbo", "model.hidden=[32]")


def _model(*overrides, shape=(28, 28, 1)):
    cfg = make_cfg(*SMALL, *overrides)
    return cfg, nnx.jit(lambda: training.make_model(cfg, shape, 0))()


def _gaussian_kl(m1, lv1, m2, lv2):
    """KL(N(m1, exp(lv1)) || N(m2, exp(lv2))) over the last axis."""
    return 0.5 * jnp.sum(lv2 - lv1 + (jnp.exp(lv1) + (m1 - m2) ** 2) / jnp.exp(lv2) - 1, axis=-1)


@pytest.mark.parametrize("top", ["standard", "vamp"])
def test_iwae_with_one_sample_is_the_elbo_of_the_same_draw(top):
    cfg, model = _model(f"bottleneck.top_prior={top}")
    part = bottleneck_of(cfg)

    @nnx.jit
    def bounds(model, key):
        out = model(X, key=key)
        elbo = objectives.bernoulli_log_likelihood(out["logits"], X) - part.kl(out)
        return elbo, part.importance_log_weights(model, X, key, 1, "bernoulli")[0]

    elbo, iwae = bounds(model, jax.random.key(4))
    np.testing.assert_allclose(iwae, elbo, rtol=1e-5)


def test_each_layers_single_sample_kl_averages_to_its_closed_form():
    """E[log q(z2|x) - log N(z2)] = KL(q(z2|x) || N(0, I)); E[log q(z1|x,z2) - log p(z1|z2)] =
    E_z2[KL(q(z1|x,z2) || p(z1|z2))], the inner KL in closed form at each z2 drawn."""
    _, model = _model()
    n = 20_000

    @nnx.jit
    def draws(model, key):
        h, b = model.encoder(X), model.bottleneck

        def one(k):
            d = b.layers(h, k)
            z2 = d["code"][..., 3:]
            return d["kl_z1"], d["kl_z2"], _gaussian_kl(d["mean1"], d["logvar1"], *b.p_z1(z2))

        return (*jax.vmap(one)(jax.random.split(key, n)), objectives.kl_standard_normal(*b.top.stats(h)))

    kl_z1, kl_z2, inner, closed_z2 = (np.asarray(a, np.float64) for a in draws(model, jax.random.key(1)))
    stderr = kl_z2.std(0) / math.sqrt(n)
    assert np.all(np.abs(kl_z2.mean(0) - closed_z2) < 4 * stderr), (kl_z2.mean(0), closed_z2)
    gap = kl_z1 - inner  # mean 0 given each z2: a tight paired check
    assert np.all(np.abs(gap.mean(0)) < 4 * gap.std(0) / math.sqrt(n)), (kl_z1.mean(0), inner.mean(0))
    assert np.all(inner.mean(0) > 0.01)  # the z1 layer's KL is a real term here


def test_a_z1_layer_whose_posterior_is_its_conditional_prior_adds_no_kl():
    cfg, model = _model()
    for net in (model.bottleneck.q_z1, model.bottleneck.p_z1):  # both N(0.3, exp(-0.5)) whatever x, z2
        for head, value in ((net.mean, 0.3), (net.logvar, -0.5)):
            head.kernel.value = jnp.zeros_like(head.kernel.value)
            head.bias.value = jnp.full_like(head.bias.value, value)
    out = nnx.jit(lambda m: m(X, key=jax.random.key(2)))(model)
    np.testing.assert_array_equal(out["kl_z1"], np.zeros(len(X)))
    np.testing.assert_array_equal(bottleneck_of(cfg).kl(out), out["kl_z2"])


def _linear_gaussian(top):
    """A model whose every map is affine and every variance constant: x = c + W1 z1 + W2 z2 + N(0, I),
    z1 | z2 ~ N(a + A z2, s), z2 ~ N(0, 1) or the mixture of the K pseudo-inputs' posteriors; z1, z2 scalar
    on 4x4 images. Returns (cfg, model, its parameters read back through the model's own maps)."""
    cfg, model = _model(f"bottleneck.top_prior={top}", "bottleneck.code_size=1", "bottleneck.pseudo_inputs=3",
                        "bottleneck.hierarchy_activation=linear", "model.hidden=[]",
                        "loss.likelihood=gaussian", "model.output_activation=linear", shape=(4, 4, 1))
    b = model.bottleneck
    for head, value in ((b.top.logvar, 1.0), (b.q_z1.logvar, 1.0), (b.p_z1.logvar, -0.5)):  # q wider than p
        head.kernel.value = jnp.zeros_like(head.kernel.value)
        head.bias.value = jnp.full_like(head.bias.value, value)
    def decode(z):
        return np.asarray(model.decode_logits(jnp.asarray(z, jnp.float32)), np.float64).reshape(len(z), -1)

    c = decode([[0.0, 0.0]])[0]
    w1, w2 = decode([[1.0, 0.0]])[0] - c, decode([[0.0, 1.0]])[0] - c
    p_mean = lambda z2: float(np.asarray(b.p_z1(jnp.full((1, 1), z2))[0])[0, 0])  # noqa: E731
    a, big_a = p_mean(0.0), p_mean(1.0) - p_mean(0.0)
    s = math.exp(-0.5)
    if top == "vamp":
        means, logvars = (np.asarray(v, np.float64)[:, 0] for v in nnx.jit(lambda b: b.top.prior_stats())(b))
    else:
        means, logvars = np.zeros(1), np.zeros(1)
    return cfg, model, dict(c=c, w1=w1, w2=w2, a=a, A=big_a, s=s, means=means, vars=np.exp(logvars))


@pytest.mark.parametrize("top", ["standard", "vamp"])
def test_the_importance_sampled_likelihood_reaches_the_linear_gaussian_closed_form(top):
    cfg, model, p = _linear_gaussian(top)
    x = jax.random.uniform(jax.random.key(3), (3, 4, 4, 1))
    k = 20_000
    part = bottleneck_of(cfg)
    log_w = nnx.jit(lambda m: part.importance_log_weights(m, x, jax.random.key(5), k, "gaussian"))(model)
    log_w = np.asarray(log_w, np.float64)  # [k, B]
    estimate = logsumexp(log_w, axis=0) - math.log(k)
    w = np.exp(log_w - log_w.max(0))
    stderr = w.std(0) / (w.mean(0) * math.sqrt(k))  # of the log of the mean weight (delta method)
    m = p["w1"] * p["A"] + p["w2"]  # x given z2: c + W1 a + m z2, covariance s W1 W1^T + I
    base = p["c"] + p["w1"] * p["a"]
    cov = p["s"] * np.outer(p["w1"], p["w1"]) + np.eye(16)
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    components = [multivariate_normal.logpdf(flat, base + m * mu, cov + v * np.outer(m, m))
                  for mu, v in zip(p["means"], p["vars"], strict=True)]
    exact = logsumexp(components, axis=0) - math.log(len(components))
    assert np.all(stderr < 0.05), stderr  # small enough for the check to mean something
    assert np.all(np.abs(estimate - exact) < 4 * stderr + 1e-3), (estimate, exact, stderr)
    elbo = log_w.mean(0)  # E_q[log w] <= log p(x): the bound is below the closed form
    assert np.all(elbo < exact - 0.05), (elbo, exact)


@pytest.mark.parametrize("top", ["standard", "vamp"])
def test_ancestral_prior_samples_have_the_linear_gaussian_moments(top):
    cfg, model, p = _linear_gaussian(top)
    n = 200_000
    codes = nnx.jit(lambda m: bottleneck_of(cfg).prior_sample(jax.random.key(6), n, cfg.bottleneck, m))(model)
    z1, z2 = np.asarray(codes, np.float64).T  # the code is [z1, z2]
    mean2 = p["means"].mean()  # z2: an equal mixture (one component N(0, 1) for the standard prior)
    var2 = np.mean(p["vars"] + p["means"] ** 2) - mean2**2
    expected_mean = [p["a"] + p["A"] * mean2, mean2]
    expected_cov = [[p["A"] ** 2 * var2 + p["s"], p["A"] * var2], [p["A"] * var2, var2]]
    v = np.max(np.diag(expected_cov))  # standard errors: sqrt(v / n) of a mean, v sqrt(2 / n) of a variance
    np.testing.assert_allclose([z1.mean(), z2.mean()], expected_mean, atol=5 * math.sqrt(v / n))
    np.testing.assert_allclose(np.cov(np.stack([z1, z2])), expected_cov, atol=5 * v * math.sqrt(2 / n))


def test_pseudo_inputs_are_encoded_by_q_z2_with_the_models_own_encoder():
    _, model = _model("bottleneck.top_prior=vamp")
    top = model.bottleneck.top
    assert top.encoder is model.encoder and top.pseudo_inputs[...].shape == (5, 28, 28, 1)
    means, _ = nnx.jit(lambda t: t.prior_stats())(top)
    u = jnp.clip(top.pseudo_inputs[...], 0, 1)
    np.testing.assert_allclose(means, model.bottleneck(model.encoder(u))["mean"][:, 3:], rtol=1e-5, atol=1e-6)


def test_bad_hierarchy_settings_fail_with_one_line():
    for override, message in (("bottleneck.top_prior=exemplar", "bottleneck.top_prior"),
                              ("bottleneck.hierarchy_activation=swish", "bottleneck.hierarchy_activation"),
                              ("bottleneck.hierarchy_hidden=0", "hierarchy_hidden")):
        with pytest.raises(ConfigError, match=message) as err:
            validate(make_cfg(*SMALL, override))
        assert "\n" not in str(err.value)


@pytest.mark.slow
def test_an_hvae_with_a_vampprior_trains_and_its_nll_uses_both_layers(fmnist_small):
    cfg = make_cfg("bottleneck.kind=hvae", "bottleneck.top_prior=vamp", "bottleneck.code_size=16",
                   "bottleneck.pseudo_inputs=50", "bottleneck.hierarchy_hidden=64", "loss.name=elbo",
                   "model.hidden=[256]", "train.epochs=2", "eval.importance_samples=20")
    result = training.fit(cfg, fmnist_small, progress=False)
    first, last = result.history
    assert last["train/loss"] < first["train/loss"] and last["test/loss"] < first["test/loss"]
    assert last["test/kl"] == pytest.approx(last["test/kl_z1"] + last["test/kl_z2"], rel=1e-4)
    assert last["test/kl_z1"] > 0 and last["test/kl_z2"] > 0
    nll = evaluation.likelihood_nll(cfg, result.model, result.state, fmnist_small.test.images[:100])
    assert np.all(np.isfinite(nll)) and 0 < np.mean(nll) < -last["test/elbo"] + 5  # IS tightens the bound
    codes = evaluation.sample_codes(cfg, result.model, None, jax.random.key(0), 4)
    assert codes.shape == (4, 32) and result.model.decode(codes).shape == (4, 28, 28, 1)
