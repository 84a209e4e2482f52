"""Speckle noise: multiplicative Gaussian, x * (1 + std * N(0, 1)), clipped to the data range.

Bright pixels are disturbed most and black ones not at all (the noise of coherent imaging:
ultrasound, radar), unlike additive Gaussian noise which also greys the background.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aeflax.parts.noise.gaussian import GaussianNoise


def speckle(key, x, std):
    """x * (1 + std * N(0, 1)), clipped to [0, 1]: the relative error of each pixel has std `std`."""
    return jnp.clip(x * (1.0 + std * jax.random.normal(key, x.shape, x.dtype)), 0.0, 1.0)


class Speckle(GaussianNoise):
    """The same field (`std`, the level) and checks as Gaussian noise; another corruption."""

    name = "speckle"

    def corrupt(self, key, x, level):
        return speckle(key, x, level)


PART = Speckle()
