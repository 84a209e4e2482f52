"""Additive Gaussian noise, clipped to the data range (Vincent et al. 2010; the Keras tutorial)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from aeflax.checks import check
from aeflax.parts import Noise, traced


def gaussian(key, x, std):
    """x + std * N(0, 1), clipped to the data range [0, 1]."""
    return jnp.clip(x + std * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)


@dataclass
class Fields:
    std: float = traced(0.0, hp="noise_std")
    fixed: bool = False  # draw the noise once per image (the Keras tutorial's protocol)


class GaussianNoise(Noise):
    name = "gaussian"
    Fields = Fields
    level = "std"

    def validate(self, cfg) -> None:
        n = cfg.noise
        check(n.std >= 0, f"noise.std={n.std} must be >= 0")
        check(not self.active(cfg) or n.std > 0, f"noise.kind={n.kind} needs noise.std > 0")

    def corrupt(self, key, x, level):
        return gaussian(key, x, level)


PART = GaussianNoise()
