"""L1 activity regularization of the code: a sparse autoencoder (Keras' activity_regularizer)."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from aeflax.checks import check
from aeflax.parts import Penalty, bottleneck_of, traced


@dataclass
class Fields:
    l1_activity: float = traced(0.0)  # weight of sum |code| per image


class L1Activity(Penalty):
    name = "l1_activity"
    Fields = Fields
    weights = ("l1_activity",)

    def validate(self, cfg) -> None:
        super().validate(cfg)
        b = bottleneck_of(cfg)
        check(not self.active(cfg) or b.activation_code,
              f"penalty.l1_activity needs a deterministic or identity code, not bottleneck={b.name}")

    def train_terms(self, batch, hp):
        a = batch.out["activation"]
        return [hp["l1_activity"] * jnp.mean(jnp.sum(jnp.abs(a.reshape(a.shape[0], -1)), axis=-1))], {}


PART = L1Activity()
