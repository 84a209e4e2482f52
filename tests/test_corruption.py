"""Corruptions have the asked statistics, are pure functions of their key, and the fixed protocol holds."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import make_cfg

from aeflax import parts, training

KEYS = jax.random.split(jax.random.key(0), 200)
NOISE = parts.registry()["noise"]
_corrupt = jax.jit(lambda kind, keys, x, hp: NOISE[kind].corrupt_batch(keys, x, hp),
                   static_argnums=0)  # one compile per kind, not per op


def corrupt(kind, keys, x, std=0.0, prob=0.0):
    """The noise part `kind` on a batch, one key per image, at the level `std` or `prob`."""
    return _corrupt(kind, keys, x, {"noise_std": jnp.float32(std), "noise_prob": jnp.float32(prob)})


def test_masking_drops_the_asked_fraction():
    x = jnp.ones((200, 28, 28, 1))
    noisy = np.asarray(corrupt("masking", KEYS, x, prob=0.3))
    assert set(np.unique(noisy)) == {0.0, 1.0}
    assert abs(np.mean(noisy == 0) - 0.3) < 0.005  # 156800 pixels: 4 sigma ~ 0.0046


def test_gaussian_noise_has_the_asked_std_and_stays_in_range():
    x = jnp.full((200, 28, 28, 1), 0.5)
    delta = np.asarray(corrupt("gaussian", KEYS, x, std=0.1)) - 0.5  # clipping at 5 sigma: none
    assert abs(delta.std() - 0.1) < 0.001 and abs(delta.mean()) < 0.001
    wide = np.asarray(corrupt("gaussian", KEYS, x, std=1.0))
    assert wide.min() == 0.0 and wide.max() == 1.0  # clipped to the data range


def test_salt_and_pepper_hits_the_asked_fraction_half_white():
    x = jnp.full((200, 28, 28, 1), 0.5)
    noisy = np.asarray(corrupt("salt_pepper", KEYS, x, prob=0.2))
    hit = noisy != 0.5
    assert abs(hit.mean() - 0.2) < 0.005
    assert abs(np.mean(noisy[hit] == 1.0) - 0.5) < 0.01


def test_noise_is_a_function_of_the_key():
    x = jnp.full((3, 28, 28, 1), 0.5)
    a = corrupt("gaussian", KEYS[:3], x, std=0.2)
    np.testing.assert_array_equal(a, corrupt("gaussian", KEYS[:3], x, std=0.2))
    assert not np.allclose(a, corrupt("gaussian", KEYS[3:6], x, std=0.2))
    assert NOISE["none"].corrupt_batch(KEYS[:3], x, {}) is x


def test_fixed_noise_is_drawn_once_per_image():
    images = jnp.full((10, 28, 28, 1), 128, jnp.uint8)
    idx, base = jnp.array([3, 7]), jax.random.key(9)
    hp = training.hyperparameters(make_cfg("noise.kind=gaussian", "noise.std=0.2"), 1)

    def noisy(fixed):
        """The encoder's inputs at steps 0 and 1 for the same two images."""
        cfg = make_cfg("noise.kind=gaussian", "noise.std=0.2", f"noise.fixed={fixed}")
        prepare = jax.jit(lambda key: training.prepare_batch(images, idx, key, hp, cfg, base))
        batches = [prepare(jax.random.key(step)) for step in (0, 1)]
        for _, x in batches:
            np.testing.assert_allclose(x, 128 / 255)  # the target stays clean
        return [np.asarray(x_in) for x_in, _ in batches]

    np.testing.assert_array_equal(*noisy(True))  # the same image, the same noise
    assert not np.allclose(*noisy(False))  # a new draw each step


def test_dynamic_binarization_redraws_bernoulli_pixels_each_step():
    images = jnp.full((64, 28, 28, 1), 51, jnp.uint8)  # intensity 0.2
    cfg = make_cfg("data.binarize=dynamic")
    hp = training.hyperparameters(cfg, 1)
    prepare = jax.jit(lambda key: training.prepare_batch(images, jnp.arange(64), key, hp, cfg, key)[0])
    a, b = np.asarray(prepare(jax.random.key(0))), np.asarray(prepare(jax.random.key(1)))
    assert set(np.unique(a)) == {0.0, 1.0} and abs(a.mean() - 0.2) < 0.01
    assert np.mean(a != b) > 0.2  # a new draw: 2 * 0.2 * 0.8 = 0.32 of the pixels differ
