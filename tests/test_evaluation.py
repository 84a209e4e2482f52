"""Evaluation metrics against known values, and every use on a small trained model."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx
from sklearn.metrics import roc_auc_score

from aeflax import evaluation, training
from aeflax.config import BottleneckConfig, ModelConfig
from aeflax.models import build
from aeflax.parts.bottleneck.gaussian import importance_log_weights


def test_psnr_of_known_pairs():
    x = np.zeros((2, 4, 4, 1), np.float32)
    recon = x.copy()
    recon[0] += 0.1  # MSE 0.01 -> 20 dB
    recon[1, :2] = 0.5  # half the pixels off by 0.5: MSE 0.125 -> 10 log10(8) dB
    np.testing.assert_allclose(evaluation.psnr(recon, x), [20.0, 10 * math.log10(8)], rtol=1e-5)
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 8, 8, 3), np.float32), rng.random((5, 8, 8, 3), np.float32)
    expected = 10 * np.log10(1 / np.mean((a - b) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(evaluation.psnr(a, b), expected, rtol=1e-5)


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    x = rng.random((3, 16, 16, 1), np.float32)
    np.testing.assert_allclose(evaluation.ssim(x, x), 1.0, atol=1e-5)
    # constant images a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1), the structure term is 1
    a, b, c1 = 0.3, 0.7, 0.01**2
    ones = np.ones((1, 16, 16, 1), np.float32)
    np.testing.assert_allclose(evaluation.ssim(a * ones, b * ones), (2 * a * b + c1) / (a * a + b * b + c1),
                               rtol=1e-4)
    noisy = np.clip(x + 0.3 * rng.standard_normal(x.shape).astype(np.float32), 0, 1)
    assert np.all(evaluation.ssim(noisy, x) < 0.9)


def test_ssim_equals_the_windowed_definition():
    """The separable-matmul filtering equals a direct 11x11 Gaussian window over every valid position."""
    rng = np.random.default_rng(1)
    x = rng.random((2, 13, 14, 2)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.sum(g) ** 2
    c1, c2 = 0.01**2, 0.03**2
    expected = np.zeros(2)
    for n in range(2):
        values = []
        for c in range(2):
            for i in range(13 - 10):
                for j in range(14 - 10):
                    a, b = y[n, i:i + 11, j:j + 11, c], x[n, i:i + 11, j:j + 11, c]
                    ma, mb = np.sum(w * a), np.sum(w * b)
                    va, vb = np.sum(w * a * a) - ma**2, np.sum(w * b * b) - mb**2
                    cov = np.sum(w * a * b) - ma * mb
                    num = (2 * ma * mb + c1) * (2 * cov + c2)
                    values.append(num / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
        expected[n] = np.mean(values)
    np.testing.assert_allclose(evaluation.ssim(y, x), expected, rtol=1e-5, atol=1e-6)


def test_auroc_known_values_and_sklearn():
    labels = np.array([0, 0, 0, 1, 1])
    assert evaluation.auroc(labels, [0.1, 0.2, 0.3, 0.8, 0.9]) == 1.0
    assert evaluation.auroc(labels, [0.9, 0.8, 0.7, 0.2, 0.1]) == 0.0
    rng = np.random.default_rng(1)
    y, s = rng.integers(0, 2, 300), rng.random(300)
    # AUROC = P(score of an anomaly > score of a normal one), by counting every pair
    pairs = np.mean(s[y == 1][:, None] > s[y == 0][None, :])
    assert evaluation.auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert evaluation.auroc(y, s) == pytest.approx(pairs)


def linear_gaussian_model(W, b, std):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, std^2 I); q(z|x) a deliberately imperfect diagonal
    approximation of the exact posterior (its variances inflated)."""
    d_x, d_z = W.shape
    model = build(ModelConfig(architecture="dense", hidden=[], output_activation="linear"),
                  BottleneckConfig(kind="gaussian", code_size=d_z), (d_x, 1, 1), nnx.Rngs(params=0))
    post_cov = np.linalg.inv(np.eye(d_z) + W.T @ W / std**2)
    gain = W @ post_cov / std**2  # mean = (x - b) @ gain
    model.bottleneck.mean.kernel.value = jnp.asarray(gain, jnp.float32)
    model.bottleneck.mean.bias.value = jnp.asarray(-b @ gain, jnp.float32)
    model.bottleneck.logvar.kernel.value = jnp.zeros((d_x, d_z))
    model.bottleneck.logvar.bias.value = jnp.asarray(np.log(np.diag(post_cov)) + 0.7, jnp.float32)
    model.decoder.layers[-1].kernel.value = jnp.asarray(W.T, jnp.float32)
    model.decoder.layers[-1].bias.value = jnp.asarray(b, jnp.float32)
    return model


@pytest.mark.slow
def test_importance_sampled_nll_matches_closed_form():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    d_x, d_z, std = 12, 3, 0.5
    W, b = rng.normal(size=(d_x, d_z)), rng.normal(size=d_x) * 0.3
    model = linear_gaussian_model(W, b, std)
    x = (rng.normal(size=(8, d_z)) @ W.T + b + std * rng.normal(size=(8, d_x))).astype(np.float32)
    exact = -multivariate_normal(b, W @ W.T + std**2 * np.eye(d_x)).logpdf(x)
    xs = jnp.asarray(x).reshape(8, d_x, 1, 1)

    def nll(k, chunk):
        key = jax.random.key(0)
        fn = lambda m, x: {"nll": evaluation.importance_nll(importance_log_weights, m, x, key, k, chunk,
                                                            "gaussian", std)}
        return np.asarray(evaluation.jit_model_fn(fn, model)(xs)["nll"])

    estimate = nll(5000, 700)  # 700 does not divide 5000: the tail is masked
    np.testing.assert_allclose(estimate, exact, atol=0.05)
    one_sample = nll(1, 1)  # the ELBO's estimate is visibly worse
    assert np.mean(one_sample - exact) > 5 * np.mean(np.abs(estimate - exact))


def test_probe_on_separable_codes_and_raw_pixels():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 8)) * 5
    y_train, y_test = rng.integers(0, 4, 400), rng.integers(0, 4, 200)
    train = centers[y_train] + rng.normal(size=(400, 8))
    test = centers[y_test] + rng.normal(size=(200, 8))
    assert evaluation.linear_probe(train, y_train, test, y_test) >= 0.99
    assert evaluation.knn_accuracy(train, y_train, test, y_test, k=5) >= 0.99
    noise = rng.normal(size=(400, 8))  # no information: chance level
    assert evaluation.linear_probe(noise, y_train, test, y_test) < 0.5


def test_active_units_and_kl_per_dim():
    rng = np.random.default_rng(0)
    means = np.concatenate([rng.normal(size=(500, 3)), 0.01 * rng.normal(size=(500, 2))], axis=1)
    assert evaluation.active_units(means) == 3
    kl = evaluation.kl_per_dim(np.zeros((4, 2)) + [1.0, 0.0], np.zeros((4, 2)))
    np.testing.assert_allclose(kl, [0.5, 0.0])


@pytest.fixture(scope="module")
def trained(fmnist_small):
    cfg = make_cfg("train.epochs=3", "train.batch_size=32")
    return cfg, training.fit(cfg, fmnist_small, progress=False)


@pytest.mark.slow
def test_every_use_on_a_trained_autoencoder(trained, fmnist_small, tmp_path):
    cfg, result = trained
    cfg = make_cfg("train.epochs=3", "train.batch_size=32", "eval.figures=true", "eval.probe=true",
                   "eval.denoising_levels=[0.1,0.5]", "eval.probe_limit=500")
    m = evaluation.evaluate_run(cfg, result, fmnist_small, tmp_path, None)
    # the test inputs are the ones training evaluated: the per-image terms average to its test/mse
    terms = evaluation.test_terms(cfg, result.model, result.state, fmnist_small.test.images)
    assert np.mean(terms["mse"]) == pytest.approx(result.history[-1]["test/mse"], rel=1e-5)
    assert m["test/bce_per_image"] == pytest.approx(784 * result.history[-1]["test/bce"], rel=1e-5)
    assert 0.3 < m["test/ssim"] < 1
    # a trained AE removes heavy noise (PSNR gain > 0) but blurs a slightly noisy image
    assert m["denoise/psnr_gain@0.5"] > 1.0
    assert m["denoise/noisy_psnr@0.1"] > m["denoise/psnr@0.1"]
    assert m["denoise/psnr_gain@0.1"] == pytest.approx(m["denoise/psnr@0.1"] - m["denoise/noisy_psnr@0.1"])
    assert m["probe/accuracy"] > 0.6 and m["probe/raw_accuracy"] > 0.6 and m["probe/knn_accuracy"] > 0.6
    figs = {p.name for p in (tmp_path / "figures").iterdir()}
    assert figs >= {"reconstructions.png", "samples.png", "interpolation.png", "latent_map.png",
                    "denoising.png"}
    logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["denoise/psnr@0.5"] == pytest.approx(m["denoise/psnr@0.5"]) and logged["epoch"] == 3


def test_one_class_anomaly_auroc(fmnist_small, tmp_path):
    """Trained on trousers only, reconstruction error separates the other classes."""
    from aeflax import data
    from aeflax.config import DataConfig

    ds = data.load(DataConfig(train_limit=1000, test_limit=500, normal_class=1))
    cfg = make_cfg("train.epochs=2", "train.batch_size=32", "data.normal_class=1", "eval.anomaly=true",
                   "eval.reconstruction=false")
    result = training.fit(cfg, ds, progress=False)
    m = evaluation.evaluate_run(cfg, result, ds, tmp_path, None)
    assert m["anomaly/auroc"] > 0.8


@pytest.mark.slow
def test_vae_likelihood_on_real_images(fmnist_small, tmp_path):
    """The bounds' order holds for any VAE, trained or not: -log p(x) (IS) <= -ELBO."""
    cfg = make_cfg("bottleneck.kind=gaussian", "bottleneck.code_size=8", "loss.name=elbo",
                   "eval.likelihood=true", "eval.importance_samples=32", "eval.importance_chunk=16",
                   "eval.likelihood_limit=100", "eval.reconstruction=false")
    graphdef, state = training.init_state(cfg, (28, 28, 1), 1)
    result = training.FitResult(graphdef, state, [])
    m = evaluation.evaluate_run(cfg, result, fmnist_small, tmp_path, None)
    terms = evaluation.test_terms(cfg, result.model, state, fmnist_small.test.images)
    assert 0 < m["test/nll_k32"] < -np.mean(terms["elbo"][:100])
    assert 0 <= m["test/active_units"] <= 8 and len(m["test/kl_per_dim"]) == 8
    assert sum(m["test/kl_per_dim"]) == pytest.approx(np.mean(terms["kl"]), rel=1e-4)


def test_pca_2d_equals_scikit_learn_up_to_sign():
    from sklearn.decomposition import PCA

    from aeflax import figures

    rng = np.random.default_rng(0)
    codes = rng.standard_normal((300, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    ours, theirs = figures.pca_2d(codes), PCA(n_components=2).fit_transform(codes)
    signs = np.sign(np.sum(ours * theirs, axis=0))
    np.testing.assert_allclose(ours * signs, theirs, atol=1e-8)
