"""penalty=rae (Ghosh et al. 2020) and the ex-post samplers that make any deterministic AE a
generator. Known values: the code and decoder penalties are beta ||z||^2 / 2 and lambda sum w^2 of
the decoder's kernels; a Gaussian mixture fit to codes reproduces their mean and covariance; an
RAE trains, and its figures' samples come from the mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx

from aeflax import evaluation, objectives, training
from aeflax.config import ConfigError, validate
from aeflax.parts.eval.sampler import gmm_sample, two_stage_fit, two_stage_sample
from aeflax.parts.penalty.rae import decoder_l2

X = jax.random.uniform(jax.random.key(0), (6, 28, 28, 1))


def test_rae_terms_are_the_code_and_decoder_l2():
    cfg = make_cfg("model.hidden=[16]", "bottleneck.code_size=8", "penalty.code_l2=0.5",
                   "penalty.decoder_l2=2.0")
    model = nnx.jit(lambda: training.make_model(cfg, (28, 28, 1), 0))()
    hp = training.hyperparameters(cfg, 1)
    plain = make_cfg("model.hidden=[16]", "bottleneck.code_size=8")
    loss, metrics = nnx.jit(lambda m: objectives.loss_and_metrics(m, X, X, jax.random.key(1), hp, cfg))(model)
    base, _ = nnx.jit(lambda m: objectives.loss_and_metrics(m, X, X, jax.random.key(1), {**hp}, plain))(model)
    z = np.asarray(model.encode(X)["code"], np.float64)
    kernels = [model.decoder.layers[0].linear.kernel, model.decoder.layers[1].kernel]
    w2 = sum(np.sum(np.asarray(k[...], np.float64) ** 2) for k in kernels)
    np.testing.assert_allclose(decoder_l2(model), w2, rtol=1e-5)
    np.testing.assert_allclose(metrics["code_l2"], 0.5 * np.mean(np.sum(z**2, -1)), rtol=1e-5)
    np.testing.assert_allclose(loss - base, 0.5 * metrics["code_l2"] + 2.0 * w2, rtol=1e-4)


def test_the_code_penalty_is_refused_with_a_prior():
    with pytest.raises(ConfigError, match="penalty.code_l2"):
        validate(make_cfg("bottleneck.kind=gaussian", "loss.name=elbo", "penalty.code_l2=0.1"))
    with pytest.raises(ConfigError, match="eval.sampler"):
        validate(make_cfg("eval.sampler=kde"))


def test_a_gmm_sampler_reproduces_the_codes_mean_and_covariance():
    rng = np.random.default_rng(0)
    cov = np.array([[2.0, 0.8, 0.0], [0.8, 1.0, -0.3], [0.0, -0.3, 0.5]])
    codes = rng.multivariate_normal([1.0, -2.0, 0.5], cov, size=3000).astype(np.float32)
    for components in (1, 5):
        z = np.asarray(gmm_sample(codes, jax.random.key(0), 40_000, components), np.float64)
        np.testing.assert_allclose(z.mean(0), codes.mean(0), atol=0.03)
        np.testing.assert_allclose(np.cov(z.T), np.cov(codes.T), atol=0.06)
    assert z.shape == (40_000, 3)


@pytest.mark.slow
def test_an_rae_trains_and_samples_from_a_mixture_on_its_codes(fmnist_small):
    cfg = make_cfg("penalty.code_l2=1e-3", "penalty.decoder_l2=1e-5", "train.epochs=2", "eval.sampler=gmm",
                   "eval.sampler_components=3")
    result = training.fit(cfg, fmnist_small, progress=False)
    first, last = result.history
    assert last["train/loss"] < first["train/loss"] and last["test/loss"] < first["test/loss"]
    codes = evaluation.encoder(result.model)(fmnist_small.test.images)
    z = evaluation.sample_codes(cfg, result.model, codes, jax.random.key(0), 8)
    images = np.asarray(result.model.decode(jnp.asarray(z)))
    assert z.shape == (8, codes.shape[1]) and images.shape == (8, 28, 28, 1)
    assert len({tuple(np.round(np.asarray(zi), 4)) for zi in z}) == 8  # draws, not the component means


@pytest.mark.slow
def test_a_two_stage_vae_fit_to_codes_reproduces_their_mean_and_covariance():
    rng = np.random.default_rng(0)
    cov = np.array([[2.0, 0.8, 0.0], [0.8, 1.0, -0.3], [0.0, -0.3, 0.5]])
    codes = rng.multivariate_normal([1.0, -2.0, 0.5], cov, size=3000).astype(np.float32)
    _, _, sd, (first, last) = two_stage_fit(codes, jax.random.key(0), steps=1000)
    # -ELBO >= the entropy of the standardized codes, 0.5 log det(2 pi e cov / sd sd^T) = 3.91 (4.26 -> 4.03)
    entropy = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * np.cov(codes.T) / np.outer(sd, sd))[1]
    assert entropy - 0.02 < last < entropy + 0.2 < first, (entropy, first, last)
    z = np.asarray(two_stage_sample(codes, jax.random.key(1), 20_000), np.float64)
    assert z.shape == (20_000, 3)
    np.testing.assert_allclose(z.mean(0), codes.mean(0), atol=0.1)
    np.testing.assert_allclose(np.cov(z.T), np.cov(codes.T), atol=0.15)
