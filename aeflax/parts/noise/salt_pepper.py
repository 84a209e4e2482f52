"""Salt-and-pepper noise: each pixel, with probability `prob`, set to 0 or 1 with equal chance."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aeflax.parts.noise.masking import Masking


def salt_pepper(key, x, prob):
    """Each pixel, with probability `prob`, set to 0 or 1 with equal chance."""
    k_hit, k_val = jax.random.split(key)
    hit = jax.random.uniform(k_hit, x.shape) < prob
    value = jax.random.bernoulli(k_val, 0.5, x.shape).astype(x.dtype)
    return jnp.where(hit, value, x)


class SaltPepper(Masking):
    """The same field (`prob`) and checks as masking noise; another corruption."""

    name = "salt_pepper"

    def corrupt(self, key, x, level):
        return salt_pepper(key, x, level)


PART = SaltPepper()
