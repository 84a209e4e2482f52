"""eval.sample_quality: the Fréchet distance and precision/recall of generated samples in the features
of a cached classifier. Known values: the distance matches scipy's sqrtm and the closed form of
diagonal Gaussians; k-NN radii and coverage match scikit-learn and scipy; a set has precision and
recall 1 against itself; on the real features the test split is at distance 0 from itself, the
training split close and noise far; the classifier reaches 0.85 test accuracy."""

import jax
import numpy as np
import pytest
import scipy.linalg
from conftest import make_cfg
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from aeflax import data, evaluation, training
from aeflax.parts.eval import sample_quality as q


def random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


def test_frechet_distance_matches_scipy_sqrtm_and_the_closed_form():
    rng = np.random.default_rng(0)
    for rank in (None, 3):  # full rank, and singular (sqrtm's hard case)
        mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
        c1, c2 = random_cov(rng, 6, rank), random_cov(rng, 6)
        scipy_fd = mu1 @ mu1 - 2 * mu1 @ mu2 + mu2 @ mu2 + np.trace(
            c1 + c2 - 2 * np.real(scipy.linalg.sqrtm(c1 @ c2)))
        np.testing.assert_allclose(q.frechet_distance(mu1, c1, mu2, c2), scipy_fd, rtol=1e-6)
        # 0 up to sqrt of rounding (~1e-8 where an eigenvalue is 0)
        assert abs(q.frechet_distance(mu1, c1, mu1, c1)) < 1e-6 * np.trace(c1)
    a, b = np.array([1.0, 4.0, 0.0]), np.array([9.0, 1.0, 2.0])  # diagonal: sum (sqrt a - sqrt b)^2
    np.testing.assert_allclose(q.frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b)),
                               3 + (1 - 3) ** 2 + (2 - 1) ** 2 + (0 - np.sqrt(2)) ** 2, rtol=1e-12)


def test_knn_radii_and_coverage_match_scikit_learn_and_scipy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(700, 5)), rng.normal(size=(300, 5)) * 1.5
    radii = q.knn_radii(x, 3, chunk=128)
    expected = NearestNeighbors(n_neighbors=4).fit(x).kneighbors(x)[0][:, 3]  # [:, 0] is the point itself
    np.testing.assert_allclose(radii, expected, rtol=1e-9)
    inside = np.mean(np.any(cdist(y, x) <= expected[None], axis=1))
    assert q.coverage(y, x, radii, chunk=64) == pytest.approx(inside, abs=1e-12)
    assert 0.2 < inside < 0.95  # a case where some are in and some out


def test_precision_and_recall_known_values():
    real = np.arange(10.0)[:, None]  # k = 1: every ball has radius 1
    fake = np.array([[4.5], [20.0]])  # one inside, one far outside; their balls (radius 15.5) hold all
    assert q.precision_recall(real, fake, k=1) == (0.5, 1.0)
    x = np.random.default_rng(2).normal(size=(400, 8))
    assert q.precision_recall(x, x) == (1.0, 1.0)
    assert q.precision_recall(x, x + 100.0) == (0.0, 0.0)


@pytest.fixture(scope="module")
def net(fmnist):
    """The cached feature network of Fashion-MNIST (trained here on first use, ~15-80 s)."""
    return q.feature_net(fmnist, data.default_data_dir())


@pytest.mark.slow
def test_the_feature_network_is_cached_and_reaches_0_85_test_accuracy(fmnist, net):
    model, meta = net
    assert q.cache_path("fashion_mnist", data.default_data_dir()).exists()
    assert meta["test_accuracy"] >= 0.85 and meta["recipe"] == q.RECIPE
    test = fmnist.test
    np.testing.assert_allclose(q.accuracy(model, test.images, test.labels), meta["test_accuracy"])
    again, _ = q.load_net(q.cache_path("fashion_mnist", data.default_data_dir()), (28, 28, 1), 10)
    images = fmnist.test.images[:50]
    np.testing.assert_array_equal(q.features(again, images), q.features(model, images))
    assert q.features(model, images).shape == (50, 128)


@pytest.mark.slow
def test_test_split_to_itself_is_0_train_is_near_and_noise_is_far(fmnist, net):
    model, _ = net
    test = q.features(model, fmnist.test.images)
    train = q.features(model, fmnist.train.images[:10000])
    noise = q.features(model, np.random.default_rng(0).random((10000, 28, 28, 1), np.float32))
    itself, near, far = (q.feature_frechet_distance(a, test) for a in (test, train, noise))
    assert abs(itself) < 1e-6 * far
    assert 0 < near < 0.05 * far, (near, far)
    assert q.precision_recall(test[:3000], test[:3000]) == (1.0, 1.0)
    # noise covers none of the real manifold (its precision is not small: its features bunch in one
    # spot that some real outliers' wide balls reach, the metric's known weakness)
    assert q.precision_recall(test[:3000], noise[:3000])[1] < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("variant", [(), ("bottleneck.kind=gaussian", "loss.name=elbo")], ids=["ae", "vae"])
def test_the_part_scores_a_trained_generator(fmnist_small, net, tmp_path, variant):
    cfg = make_cfg(*variant, "train.epochs=1", "eval.reconstruction=false", "eval.sample_quality=true",
                   "eval.quality_samples=500")
    result = training.fit(cfg, fmnist_small, progress=False)
    metrics = evaluation.evaluate_run(cfg, result, fmnist_small, tmp_path, None)
    model, meta = net
    key = jax.random.fold_in(evaluation.eval_key(result.state), q.QUALITY_STREAM)
    samples = q.generate(cfg, result.model, result.state, fmnist_small.train.images, key, 500)
    assert samples.shape == (500, 28, 28, 1) and samples.min() >= 0 and samples.max() <= 1
    fake, real = q.features(model, samples), q.features(model, fmnist_small.test.images)  # test[:500]
    np.testing.assert_allclose(metrics["gen/fd_fashion_mnist"], q.feature_frechet_distance(fake, real),
                               rtol=1e-6)
    assert (metrics["gen/precision"], metrics["gen/recall"]) == q.precision_recall(real, fake)
    floor = q.feature_frechet_distance(q.features(model, fmnist_small.train.images[:500]), real)
    assert metrics["gen/fd_fashion_mnist"] > floor > 0  # a 1-epoch generator is worse than real images
    assert metrics["gen/feature_net_accuracy"] == meta["test_accuracy"]
    plain = evaluation.evaluate_run(make_cfg("eval.reconstruction=false"), result, fmnist_small, tmp_path,
                                    None)
    assert not any(k.startswith("gen/") for k in plain)  # not asked: not run
