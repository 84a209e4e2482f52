"""bottleneck=exemplar (Norouzi et al. 2020): the prior is a Parzen window over the training images'
codes. Known values: over one exemplar it is that exemplar's Gaussian; the mixture is scipy's
logsumexp of Gaussian densities (chunked or not); while training an image's own exemplar, and only
it, is left out, over the exemplars drawn; retrieval keeps the nearest and bounds the exact prior
from below; the cache after a refresh is the encoder's means, and a checkpoint keeps it; it trains on
real images, the cache follows the final encoder, and the importance-sampled NLL uses the prior."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from aeflax import checkpoint, evaluation, objectives, training
from aeflax.config import ConfigError, validate
from aeflax.parts import bottleneck_of
from aeflax.parts.bottleneck import exemplar
from aeflax.parts.bottleneck.exemplar import log_parzen

D = 3
IMAGES = jax.random.randint(jax.random.key(0), (8, 28, 28, 1), 0, 256).astype(jnp.uint8)
# compiled, each once: op by op they take seconds on a busy machine
loo_log_prior = nnx.jit(exemplar.leave_one_out_log_prior, static_argnums=(6, 7))
exemplar_means = nnx.jit(exemplar.exemplar_means)
encode_all = nnx.jit(exemplar.encode_all, static_argnums=2)


def _model(num_train, *overrides):
    cfg = make_cfg("bottleneck.kind=exemplar", f"bottleneck.code_size={D}", "loss.name=elbo",
                   "model.hidden=[32]", *overrides)
    return cfg, nnx.jit(lambda: training.make_model(cfg, (28, 28, 1), 0, num_train))()


def _gaussian(z, mean, logvar):
    """log N(z; mean, exp(logvar) I) by scipy, float64."""
    return multivariate_normal(np.asarray(mean, np.float64), math.exp(logvar) * np.eye(len(mean))).logpdf(z)


def test_the_mixture_is_a_logsumexp_of_gaussians_chunked_or_not():
    z = np.asarray(jax.random.normal(jax.random.key(1), (7, 4, D)))
    means = np.asarray(2 * jax.random.normal(jax.random.key(2), (50, D)))
    logvar = -0.7
    log_k = np.stack([_gaussian(z, m, logvar) for m in means], -1)  # [7, 4, 50]
    reference = logsumexp(log_k, axis=-1) - math.log(50)
    np.testing.assert_allclose(log_parzen(z, means, logvar), reference, rtol=1e-5)
    # 28 kernel values at a time: one exemplar per chunk; then 3 per chunk, the last chunk padded
    np.testing.assert_allclose(log_parzen(z, means, logvar, budget=28), reference, rtol=1e-5)
    np.testing.assert_allclose(log_parzen(z, means, logvar, budget=84), reference, rtol=1e-5)


def test_the_prior_over_one_exemplar_is_its_gaussian():
    """The evaluation prior over one cached code, its KL, its samples; and the training prior of
    an image whose split holds one other image: that image's Gaussian, re-encoded."""
    cfg, model = _model(1)
    mu, logvar = np.array([0.5, -1.0, 2.0], np.float32), -0.4
    model.bottleneck.codes[...] = jnp.asarray(mu[None])
    model.bottleneck.prior_logvar[...] = jnp.float32(logvar)
    z = np.asarray(jax.random.normal(jax.random.key(3), (5, 2, D)))
    np.testing.assert_allclose(nnx.jit(lambda b, z: b.log_prior(z))(model.bottleneck, z),
                               _gaussian(z, mu, logvar), rtol=1e-5)

    @nnx.jit
    def kl_and_samples(model):
        out = model(IMAGES[:4] / 255.0, key=jax.random.key(4))
        log_q = objectives.log_normal(out["code"], out["mean"], out["logvar"])
        samples = model.bottleneck.prior_sample(jax.random.key(5), 40_000)
        return out["code"], log_q, bottleneck_of(cfg).kl(out), samples

    code, log_q, kl, samples = kl_and_samples(model)
    np.testing.assert_allclose(kl, log_q - _gaussian(code, mu, logvar), rtol=1e-4, atol=1e-4)
    samples = np.asarray(samples, np.float64)
    np.testing.assert_allclose(samples.mean(0), mu, atol=4 * math.exp(logvar / 2) / math.sqrt(40_000))
    np.testing.assert_allclose(samples.std(0), math.exp(logvar / 2), rtol=0.02)

    two = IMAGES[:2]  # the batch image is the second; its prior is the first's Gaussian
    zb = jnp.asarray(z[0, :1], jnp.float32)
    mu0 = exemplar_means(model, two[:1])[0]
    for knn in (0, 1):
        got = loo_log_prior(model, zb, zb, two, jnp.array([1]), jax.random.key(6), None, knn)
        np.testing.assert_allclose(got, _gaussian(zb, mu0, logvar), rtol=1e-5)


def test_leave_one_out_leaves_out_exactly_the_own_exemplar():
    """An image at its own exemplar's code with a narrow kernel: with the exemplar left out its prior
    is the others' mixture (a numpy reference over exactly the exemplars drawn), far below the
    evaluation prior that keeps it."""
    _, model = _model(8)
    model.bottleneck.codes[...] = encode_all(model, IMAGES, 1000)
    logvar = -8.0
    model.bottleneck.prior_logvar[...] = jnp.float32(logvar)
    idx = jnp.array([0, 3, 5])
    means = np.asarray(exemplar_means(model, IMAGES), np.float64)
    z = means[np.asarray(idx)]
    key = jax.random.key(7)
    for sample in (None, 20):  # every exemplar once, or 20 drawn with replacement (repeats, own ones)
        drawn = np.arange(8) if sample is None else np.asarray(jax.random.randint(key, (sample,), 0, 8))
        got = loo_log_prior(model, jnp.asarray(z, jnp.float32), z, IMAGES, idx, key, sample, 0)
        for b, i in enumerate(np.asarray(idx)):
            others = drawn[drawn != i]
            log_k = [_gaussian(z[b], means[j], logvar) for j in others]
            np.testing.assert_allclose(got[b], logsumexp(log_k) - math.log(len(others)), rtol=1e-4)
    kept = nnx.jit(lambda b, z: b.log_prior(z))(model.bottleneck, jnp.asarray(z, jnp.float32))
    assert np.all(kept - got > 20), (kept, got)  # nats: the own exemplar was the only close one


def test_retrieval_keeps_the_nearest_and_bounds_the_exact_prior_from_below():
    _, model = _model(8)
    model.bottleneck.codes[...] = encode_all(model, IMAGES, 1000)
    logvar = -3.0
    model.bottleneck.prior_logvar[...] = jnp.float32(logvar)
    idx = jnp.array([1, 6])
    means = np.asarray(exemplar_means(model, IMAGES), np.float64)
    z = np.asarray(means[np.asarray(idx)] + 0.05 * np.asarray(jax.random.normal(jax.random.key(8), (2, D))))
    mean = jnp.asarray(means[np.asarray(idx)], jnp.float32)
    prior = lambda knn: loo_log_prior(  # noqa: E731
        model, jnp.asarray(z, jnp.float32), mean, IMAGES, idx, jax.random.key(9), None, knn)
    exact = prior(0)
    np.testing.assert_allclose(prior(7), exact, rtol=1e-5)  # every other exemplar: the exact prior
    np.testing.assert_allclose(prior(20), exact, rtol=1e-5)  # more than there are: the same
    two = prior(2)
    for b, i in enumerate(np.asarray(idx)):
        dist = np.sum((means - means[i]) ** 2, -1)
        dist[i] = np.inf
        nearest = np.argsort(dist)[:2]
        reference = logsumexp([_gaussian(z[b], means[j], logvar) for j in nearest]) - math.log(7)
        np.testing.assert_allclose(two[b], reference, rtol=1e-4)
    assert np.all(two < exact)


def test_the_cache_after_a_refresh_is_the_encoders_means():
    cfg, model = _model(37)
    images = jax.random.randint(jax.random.key(10), (37, 28, 28, 1), 0, 256).astype(jnp.uint8)
    means = np.asarray(nnx.jit(lambda m, x: m.encode(x / 255.0)["mean"])(model, images))
    np.testing.assert_allclose(encode_all(model, images, 10), means, rtol=1e-5, atol=1e-6)  # 4 chunks
    nnx.jit(bottleneck_of(cfg).refresh)(model, images)
    np.testing.assert_allclose(model.bottleneck.codes[...], means, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_keeps_the_cache(tmp_path):
    cfg, _ = _model(8)
    graphdef, state = training.init_state(cfg, (28, 28, 1), 1, num_train=8)
    model = training.merge(graphdef, state)
    nnx.jit(bottleneck_of(cfg).refresh)(model, IMAGES)
    state = state.replace(other=nnx.state(model, nnx.Not(nnx.Param)))
    mgr = checkpoint.manager(tmp_path)
    checkpoint.save(mgr, 1, state)
    _, target = training.init_state(cfg, (28, 28, 1), 1, num_train=8)
    restored = training.merge(graphdef, checkpoint.restore(mgr, target, 1))
    assert float(jnp.abs(restored.bottleneck.codes[...]).max()) > 0
    np.testing.assert_array_equal(restored.bottleneck.codes[...], model.bottleneck.codes[...])


@pytest.mark.parametrize("overrides,message", [
    (["loss.name=iwae"], "trains with loss=elbo"),
    (["bottleneck.exemplar_sample=0"], "exemplar_sample=0 must be >= 1"),
    (["bottleneck.exemplar_knn=-1"], "exemplar_knn=-1 must be >= 0"),
])
def test_bad_settings_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate(make_cfg("bottleneck.kind=exemplar", "loss.name=elbo", *overrides))
    assert "\n" not in str(err.value)


def test_a_model_without_the_training_split_size_is_refused():
    cfg = make_cfg("bottleneck.kind=exemplar", "loss.name=elbo")
    with pytest.raises(ValueError, match="num_train=len"):
        training.make_model(cfg, (28, 28, 1), 0)


@pytest.mark.slow
@pytest.mark.parametrize("knn", [0, 10])
def test_an_exemplar_vae_trains_and_its_likelihood_uses_the_prior(fmnist_small, knn):
    cfg = make_cfg("bottleneck.kind=exemplar", "bottleneck.code_size=16", "loss.name=elbo",
                   "model.hidden=[256]", "train.epochs=2", "train.batch_size=64",
                   "eval.importance_samples=20", "bottleneck.exemplar_sample=500",
                   f"bottleneck.exemplar_knn={knn}")
    result = training.fit(cfg, fmnist_small, progress=False)
    first, last = result.history
    assert last["train/loss"] < first["train/loss"] and last["test/loss"] < first["test/loss"]
    model = result.model
    means = np.asarray(model.encode(fmnist_small.train.images / 255.0)["mean"])  # the final encoder's
    np.testing.assert_allclose(model.bottleneck.codes[...], means, rtol=1e-4, atol=1e-5)
    nll = evaluation.likelihood_nll(cfg, model, result.state, fmnist_small.test.images[:100])
    assert np.all(np.isfinite(nll)) and 0 < np.mean(nll) < -last["test/elbo"] + 5  # IS tightens the bound
    assert evaluation.sample_codes(cfg, model, None, jax.random.key(0), 4).shape == (4, 16)


@pytest.mark.slow
def test_a_run_resumed_from_its_checkpoint_trains_on_as_if_never_stopped(fmnist_small, tmp_path):
    """Two epochs straight, or one, a checkpoint, a restore into a fresh state and one more: the
    same metrics and the same cache (the second epoch's retrieval searches the restored cache)."""
    small = ("bottleneck.kind=exemplar", "bottleneck.code_size=8", "loss.name=elbo", "model.hidden=[64]",
             "train.batch_size=100", "bottleneck.exemplar_sample=300")
    cfg = make_cfg(*small, "train.epochs=2")
    straight = training.fit(cfg, fmnist_small, progress=False)
    one = training.fit(make_cfg(*small, "train.epochs=1"), fmnist_small, progress=False)
    mgr = checkpoint.manager(tmp_path)
    checkpoint.save(mgr, 1, one.state)
    graphdef, target = training.init_state(cfg, (28, 28, 1), 20, num_train=len(fmnist_small.train))
    resumed = training.fit(cfg, fmnist_small, state=checkpoint.restore(mgr, target, 1), graphdef=graphdef,
                           progress=False)
    same = lambda m: {k: v for k, v in m.items() if k != "epoch_seconds"}  # noqa: E731
    assert same(resumed.history[0]) == same(straight.history[1])
    np.testing.assert_array_equal(resumed.model.bottleneck.codes[...], straight.model.bottleneck.codes[...])


@pytest.mark.slow
def test_a_saved_run_loads_with_its_cache(tmp_path, fmnist_small):
    """run.train_and_evaluate builds the model with the split's size; load_run counts it from the
    run's data, restores the cache the run ended with and samples from the prior."""
    from omegaconf import OmegaConf

    import aeflax
    from aeflax.run import train_and_evaluate

    cfg = make_cfg("bottleneck.kind=exemplar", "bottleneck.code_size=8", "loss.name=elbo",
                   "model.hidden=[64]", "bottleneck.exemplar_sample=300", "data.train_limit=2000",
                   "data.test_limit=500", "train.epochs=1", "train.batch_size=100")
    summary = train_and_evaluate(cfg, tmp_path, progress=False)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    run = aeflax.load_run(tmp_path)
    np.testing.assert_allclose(run.model.bottleneck.codes[...], run.encode(fmnist_small.train.images),
                               rtol=1e-4, atol=1e-5)
    assert run.sample(4).shape == (4, 28, 28, 1)
    assert np.isfinite(summary["test/elbo"])
