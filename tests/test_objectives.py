"""Objectives and bottlenecks against known values: KL, IWAE, contractive, top-k, VQ."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx

from aeflax import objectives, training
from aeflax.parts.bottleneck.deterministic import top_k_mask
from aeflax.parts.bottleneck.gaussian import importance_log_weights
from aeflax.parts.bottleneck.vq import VectorQuantized, nearest, straight_through
from aeflax.parts.loss.elbo import kl_weight
from aeflax.parts.loss.iwae import iwae_bound
from aeflax.parts.penalty.contractive import contractive as contractive_penalty
from aeflax.parts.penalty.kl_sparsity import kl_sparsity
from aeflax.parts.penalty.weight_norms import kernel_norms

X = jax.random.uniform(jax.random.key(0), (6, 28, 28, 1))


def test_kl_of_standard_normal_to_itself_is_zero():
    zeros = jnp.zeros((5, 16))
    np.testing.assert_array_equal(objectives.kl_standard_normal(zeros, zeros), np.zeros(5))


def test_kl_closed_form_matches_monte_carlo():
    mean = jnp.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]])
    logvar = jnp.array([[0.2, -1.0, 0.5], [1.0, 0.0, -2.0]])
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.key(1), (200_000, *mean.shape))
    zeros = jnp.zeros_like(mean)
    log_ratio = objectives.log_normal(z, mean, logvar) - objectives.log_normal(z, zeros, zeros)
    mc, stderr = jnp.mean(log_ratio, 0), jnp.std(log_ratio, 0) / math.sqrt(z.shape[0])
    closed = objectives.kl_standard_normal(mean, logvar)
    assert np.all(np.abs(mc - closed) < 4 * stderr), (mc, closed, stderr)


def test_likelihoods_known_values():
    x = jnp.full((2, 4, 4, 1), 0.3)
    # N(x; x, 0.1^2) per pixel: -0.5 log(2 pi) - log 0.1; Bernoulli with logit 0: -log 2 per pixel
    expect = 16 * (-0.5 * math.log(2 * math.pi) - math.log(0.1))
    np.testing.assert_allclose(objectives.gaussian_log_likelihood(x, x, 0.1), [expect] * 2, rtol=1e-6)
    np.testing.assert_allclose(objectives.bernoulli_log_likelihood(jnp.zeros_like(x), x),
                               [-16 * math.log(2)] * 2, rtol=1e-6)


def _model(*overrides):
    """(cfg, model) for the seed config with overrides, initialized as one compiled program."""
    cfg = make_cfg(*overrides)
    return cfg, nnx.jit(lambda: training.make_model(cfg, (28, 28, 1), 0))()


def _vae(*overrides):
    return _model("bottleneck.kind=gaussian", "bottleneck.code_size=8", "loss.name=iwae", *overrides)


def test_iwae_with_one_sample_is_the_elbo_of_the_same_draw():
    cfg, model = _vae("loss.k=1")
    hp = training.hyperparameters(cfg, 1)
    noisy = jnp.clip(X + 0.1, 0, 1)  # a denoising VAE: the encoder reads `noisy`, p(x|z) scores the clean X

    @nnx.jit
    def bounds(model, key):
        out = model(noisy, key=key)
        log_px = objectives.bernoulli_log_likelihood(out["logits"], X)
        zeros = jnp.zeros_like(out["mean"])
        elbo = log_px + objectives.log_normal(out["code"], zeros, zeros) - objectives.log_normal(
            out["code"], out["mean"], out["logvar"])
        # and the training objective with loss=iwae, k=1 reports the same number
        metrics = objectives.loss_and_metrics(model, noisy, X, key, hp, cfg)[1]
        iwae = iwae_bound(importance_log_weights(model, noisy, key, 1, "bernoulli", target=X))
        return elbo, iwae, metrics["iwae"]

    elbo, iwae, reported = bounds(model, jax.random.key(3))
    np.testing.assert_allclose(iwae, elbo, rtol=1e-5)
    np.testing.assert_allclose(reported, jnp.mean(elbo), rtol=1e-5)


@pytest.mark.parametrize("method", ["closed_form", "autodiff"])
def test_contractive_equals_the_analytic_value(method):
    # a linear encoder h = W x + b: J = W^T, so ||J||_F^2 = ||W||_F^2 for every input
    cfg, model = _model("bottleneck.activation=linear", "bottleneck.code_size=10")
    w = np.asarray(model.bottleneck.linear.kernel[...])
    contractive = jax.jit(contractive_penalty, static_argnums=2)
    np.testing.assert_allclose(contractive(model, X, method), np.sum(w**2), rtol=1e-5)
    # a sigmoid encoder: Rifai et al.'s sum_j (h_j (1 - h_j))^2 ||W_j||^2, batch mean
    cfg, model = _model("bottleneck.activation=sigmoid", "bottleneck.code_size=10")
    w, b = np.asarray(model.bottleneck.linear.kernel[...]), np.asarray(model.bottleneck.linear.bias[...])
    h = 1 / (1 + np.exp(-(np.asarray(X).reshape(6, -1) @ w + b)))
    expect = np.mean(np.sum((h * (1 - h)) ** 2 * np.sum(w**2, axis=0), axis=1))
    np.testing.assert_allclose(contractive(model, X, method), expect, rtol=1e-4)


def test_contractive_autodiff_through_hidden_layers_matches_finite_differences():
    cfg, model = _model("model.hidden=[32]", "bottleneck.activation=tanh", "bottleneck.code_size=4")
    v, eps = np.asarray(X[0]).reshape(-1), 1e-2
    code = nnx.jit(lambda m, batch: m.encode(batch.reshape(-1, 28, 28, 1))["activation"])
    cols = (code(model, v + eps * np.eye(v.size)) - code(model, v - eps * np.eye(v.size))) / (2 * eps)
    exact = nnx.jit(contractive_penalty, static_argnums=2)(model, X[:1], "autodiff")
    np.testing.assert_allclose(exact, np.sum(np.square(cols)), rtol=1e-2)  # cols: [784 inputs, code]


def test_kl_sparsity_is_zero_at_the_target_and_positive_elsewhere():
    at_target = jnp.array([[0.1, 0.1], [0.1, 0.1]])
    assert abs(float(kl_sparsity(at_target, 0.1))) < 1e-6
    rho_hat = 0.3
    expect = 2 * (0.1 * math.log(0.1 / rho_hat) + 0.9 * math.log(0.9 / (1 - rho_hat)))
    np.testing.assert_allclose(kl_sparsity(jnp.full((4, 2), rho_hat), 0.1), expect, rtol=1e-5)


@pytest.mark.slow
def test_top_k_keeps_exactly_k_largest_units():
    a = jax.random.normal(jax.random.key(0), (50, 100))
    a = a.at[:, :40].set(0.0)  # ties (a dead ReLU block) must not let extra units through
    for k in (7, 60):
        code = np.asarray(jax.jit(top_k_mask, static_argnums=1)(a, k))
        assert np.all(np.sum(code != 0, axis=1) <= k)
        kept = np.sort(np.asarray(a), axis=1)[:, -k:]
        np.testing.assert_allclose(np.sort(code, axis=1)[:, -k:][kept > 0], kept[kept > 0])
    code = top_k_mask(jnp.abs(a) + 1.0, 7)  # strictly positive: exactly k survive
    assert np.all(np.sum(np.asarray(code) != 0, axis=1) == 7)
    m = objectives.sparsity_metrics(code, "linear")
    np.testing.assert_allclose(m["active_fraction"], 0.07, rtol=1e-6)


@pytest.mark.slow
def test_vq_picks_the_nearest_entry_and_straight_through_passes_gradients():
    codebook = jax.random.normal(jax.random.key(1), (16, 3))
    z_e = jax.random.normal(jax.random.key(2), (5, 4, 3))
    idx, z_q = nearest(z_e, codebook)
    brute = np.argmin(((np.asarray(z_e)[..., None, :] - np.asarray(codebook)) ** 2).sum(-1), axis=-1)
    np.testing.assert_array_equal(idx, brute)
    np.testing.assert_allclose(straight_through(z_e, z_q), z_q, atol=1e-6)  # the value of z_q
    w = jax.random.normal(jax.random.key(3), z_e.shape)
    decoder_loss = lambda z: jnp.sum(jnp.sin(z) * w)
    grad_e = jax.grad(lambda z: decoder_loss(straight_through(z, jax.lax.stop_gradient(z_q))))(z_e)
    np.testing.assert_allclose(grad_e, jax.grad(decoder_loss)(z_q), rtol=1e-6)  # grad wrt z_e == wrt z_q


def test_vq_losses_perplexity_and_encoder_gradient():
    _, model = _model("bottleneck.kind=vq", "bottleneck.code_size=16", "bottleneck.embedding_dim=4",
                      "bottleneck.codebook_size=32")
    out = nnx.jit(lambda m: m(X))(model)
    z_e, z_q = np.asarray(out["z_e"]), np.asarray(out["z_q"])
    expect = np.mean((z_e - z_q).reshape(6, -1) ** 2, axis=1)
    np.testing.assert_allclose(out["commitment_loss"], expect, rtol=1e-5)
    np.testing.assert_allclose(out["codebook_loss"], expect, rtol=1e-5)
    counts = np.bincount(np.asarray(out["indices"]).reshape(-1), minlength=32) / 24
    nz = counts[counts > 0]
    np.testing.assert_allclose(out["perplexity"], np.exp(-np.sum(nz * np.log(nz))), rtol=1e-4)
    np.testing.assert_allclose(out["codebook_usage"], len(nz) / 32)
    # the reconstruction loss alone reaches the encoder through the quantizer
    graphdef, params, other = nnx.split(model, nnx.Param, ...)

    def recon_loss(p):
        return jnp.mean(objectives.mse(nnx.merge(graphdef, p, other)(X)["recon"], X))

    grads = jax.jit(jax.grad(recon_loss))(params)
    assert float(jnp.abs(grads["bottleneck"]["pre"]["kernel"][...]).max()) > 0


@pytest.mark.slow
def test_vq_ema_update_moves_entries_to_the_mean_of_their_vectors():
    vq = VectorQuantized(5, 4, 2, 8, 1e-9, nnx.Rngs(0))
    h = jax.random.normal(jax.random.key(4), (30, 5))
    out = nnx.jit(lambda vq: vq(h, train=True))(vq)
    idx, z_e = np.asarray(out["indices"]).reshape(-1), np.asarray(out["z_e"]).reshape(-1, 2)
    for i in np.unique(idx):
        np.testing.assert_allclose(vq.codebook[...][i], z_e[idx == i].mean(0), rtol=1e-4, atol=1e-5)
    before = np.asarray(vq.codebook[...])
    nnx.jit(lambda vq: vq(h, train=False))(vq)  # evaluation never moves the codebook
    np.testing.assert_array_equal(vq.codebook[...], before)


@pytest.mark.slow
def test_prior_samples_need_a_bottleneck_with_a_prior():
    _, model = _vae()
    images = nnx.jit(lambda m: m.sample(jax.random.key(0), 5))(model)
    assert images.shape == (5, 28, 28, 1) and float(images.min()) >= 0 and float(images.max()) <= 1
    with pytest.raises(TypeError, match="needs a bottleneck with a prior"):
        _model()[1].sample(jax.random.key(0), 5)


def test_weight_penalties_sum_over_kernels_only():
    _, model = _model("model.hidden=[16]", "bottleneck.code_size=8")
    kernels = [model.encoder.layers[0].linear.kernel, model.bottleneck.linear.kernel,
               model.decoder.layers[0].linear.kernel, model.decoder.layers[1].kernel]
    l1, l2 = jax.jit(kernel_norms)(model)
    np.testing.assert_allclose(l1, sum(np.abs(np.asarray(k[...])).sum() for k in kernels), rtol=1e-5)
    np.testing.assert_allclose(l2, sum(np.square(np.asarray(k[...])).sum() for k in kernels), rtol=1e-5)


def test_kl_warmup_ramps_linearly_to_beta():
    hp = {"beta": jnp.float32(4.0), "warmup_steps": jnp.float32(100), "warmup_stair": jnp.float32(1)}
    weights = [float(kl_weight(hp, s)) for s in (0, 49, 99, 500)]
    np.testing.assert_allclose(weights, [0.04, 2.0, 4.0, 4.0], rtol=1e-6)
    assert float(kl_weight(dict(hp, warmup_steps=jnp.float32(0)), 0)) == 4.0


def test_stable_bce_equals_optax():
    import optax

    from aeflax.objectives import sigmoid_bce

    logits = jnp.linspace(-40.0, 40.0, 801)
    x = jnp.linspace(0.0, 1.0, 801)
    np.testing.assert_allclose(sigmoid_bce(logits, x), optax.sigmoid_binary_cross_entropy(logits, x),
                               atol=2e-6)


def test_bce_from_sigmoid_equals_the_logits_form():
    from aeflax.objectives import bce_from_logits, bce_from_sigmoid

    logits = jnp.linspace(-40.0, 40.0, 784).reshape(1, 28, 28, 1)
    x = jnp.linspace(0.0, 1.0, 784).reshape(1, 28, 28, 1)
    np.testing.assert_allclose(bce_from_sigmoid(logits, jax.nn.sigmoid(logits), x),
                               bce_from_logits(logits, x), rtol=1e-6)
