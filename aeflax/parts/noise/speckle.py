"""Speckle noise: multiplicative Gaussian, x * (1 + std * N(0, 1)), clipped to the data range.

Bright pixels are disturbed most and black ones not at all (the noise of coherent imaging:
ultrasound, radar), unlike additive Gaussian noise which also greys the background.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from aeflax.checks import check
from aeflax.parts import Noise, traced


def speckle(key, x, std):
    """x * (1 + std * N(0, 1)), clipped to [0, 1]: the relative error of each pixel has std `std`."""
    return jnp.clip(x * (1.0 + std * jax.random.normal(key, x.shape, x.dtype)), 0.0, 1.0)


@dataclass
class Fields:  # both fields shared with noise=gaussian, declared alike (the registry checks it)
    std: float = traced(0.0, hp="noise_std")
    fixed: bool = False  # draw the noise once per image (the Keras tutorial's protocol)


class Speckle(Noise):
    name = "speckle"
    Fields = Fields
    level = "std"

    def validate(self, cfg) -> None:
        n = cfg.noise
        check(n.std >= 0, f"noise.std={n.std} must be >= 0")
        check(not self.active(cfg) or n.std > 0, "noise.kind=speckle needs noise.std > 0")

    def corrupt(self, key, x, level):
        return speckle(key, x, level)


PART = Speckle()
