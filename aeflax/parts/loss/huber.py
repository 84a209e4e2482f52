"""The Huber (smooth-L1) reconstruction loss: quadratic for pixel errors up to `delta`, linear
beyond, so a few badly reconstructed pixels pull less than under MSE (Huber 1964)."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from aeflax.checks import check
from aeflax.parts import Loss, traced


def huber(recon, x, delta):
    """Per image, the mean over pixels of e^2 / 2 for |e| <= delta and delta (|e| - delta / 2) beyond."""
    e = jnp.abs(recon - x).reshape(x.shape[0], -1)
    small = jnp.minimum(e, delta)  # one smooth form: the quadratic part, then the linear rest
    return jnp.mean(0.5 * small**2 + delta * (e - small), axis=-1)


@dataclass
class Fields:
    delta: float = traced(0.1, hp="huber_delta")  # the |pixel error| where quadratic turns linear


class Huber(Loss):
    name = "huber"
    Fields = Fields

    def validate(self, cfg) -> None:
        check(cfg.loss.delta > 0, f"loss.delta={cfg.loss.delta} must be > 0 (Huber's threshold)")

    def train_terms(self, batch, hp):
        return jnp.mean(huber(batch.out["recon"], batch.x, hp["huber_delta"])), {}

    def eval_terms(self, batch):
        return {"loss": huber(batch.out["recon"], batch.x, batch.hp["huber_delta"])}


PART = Huber()
