"""Masking noise: each pixel set to 0 with probability `prob` (Vincent et al. 2010)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from aeflax.checks import check
from aeflax.parts import Noise, traced


def masking(key, x, prob):
    """Each pixel set to 0 with probability `prob`."""
    return jnp.where(jax.random.uniform(key, x.shape) < prob, 0.0, x)


@dataclass
class Fields:
    prob: float = traced(0.0, hp="noise_prob")  # the share of pixels hit (masking, salt_pepper)
    fixed: bool = False  # draw the noise once per image (the Keras tutorial's protocol)


class Masking(Noise):
    name = "masking"
    Fields = Fields
    level = "prob"

    def validate(self, cfg) -> None:
        n = cfg.noise
        check(0 <= n.prob < 1, f"noise.prob={n.prob} must be in [0, 1)")
        check(not self.active(cfg) or n.prob > 0, f"noise.kind={n.kind} needs noise.prob > 0")

    def corrupt(self, key, x, level):
        return masking(key, x, level)


PART = Masking()
