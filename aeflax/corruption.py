"""Input corruption for denoising autoencoders: pure functions of a PRNG key.

`corrupt(kind, keys, x, std, prob)` corrupts a batch of images in [0, 1] with one key
per image, so the same key always gives the same noisy image (the "noise drawn once"
protocol folds the image index into a fixed key). `std` and `prob` may be traced values,
so a sweep over noise levels is one compiled program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("none", "gaussian", "masking", "salt_pepper")


def gaussian(key, x, std):
    """x + std * N(0, 1), clipped to the data range [0, 1]."""
    return jnp.clip(x + std * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)


def masking(key, x, prob):
    """Each pixel set to 0 with probability `prob` (masking noise, Vincent et al. 2010)."""
    return jnp.where(jax.random.uniform(key, x.shape) < prob, 0.0, x)


def salt_pepper(key, x, prob):
    """Each pixel, with probability `prob`, set to 0 or 1 with equal chance."""
    k_hit, k_val = jax.random.split(key)
    hit = jax.random.uniform(k_hit, x.shape) < prob
    value = jax.random.bernoulli(k_val, 0.5, x.shape).astype(x.dtype)
    return jnp.where(hit, value, x)


def corrupt(kind: str, keys, x, std=0.0, prob=0.0):
    """Corrupt each image of the batch `x` with its own key from `keys` ([B] keys)."""
    if kind == "none":
        return x
    one = {"gaussian": lambda k, xi: gaussian(k, xi, std),
           "masking": lambda k, xi: masking(k, xi, prob),
           "salt_pepper": lambda k, xi: salt_pepper(k, xi, prob)}[kind]
    return jax.vmap(one)(keys, x)
