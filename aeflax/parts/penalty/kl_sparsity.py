"""The sparse autoencoder of Ng's notes: KL(rho || mean activation) summed over code units."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from aeflax.checks import check
from aeflax.parts import Penalty, traced


def kl_sparsity(activation, target):
    """Sum over units of KL(rho || rho_hat), rho_hat the unit's mean activation in the batch."""
    rho_hat = jnp.clip(jnp.mean(activation, axis=0), 1e-6, 1 - 1e-6)
    return jnp.sum(target * jnp.log(target / rho_hat)
                   + (1 - target) * jnp.log((1 - target) / (1 - rho_hat)))


@dataclass
class Fields:
    kl_sparsity: float = traced(0.0)  # weight beta of KL(rho || mean activation)
    sparsity_target: float = traced(0.05)  # rho


class KLSparsity(Penalty):
    name = "kl_sparsity"
    Fields = Fields
    weights = ("kl_sparsity",)

    def validate(self, cfg) -> None:
        super().validate(cfg)
        p, b = cfg.penalty, cfg.bottleneck
        check(0 < p.sparsity_target < 1, f"penalty.sparsity_target={p.sparsity_target} must be in (0, 1)")
        if self.active(cfg):
            check(b.activation == "sigmoid",
                  "penalty.kl_sparsity needs a sigmoid code (bottleneck.activation=sigmoid)")
            check(b.kind == "deterministic",
                  f"penalty.kl_sparsity needs bottleneck=deterministic with activation=sigmoid, not {b.kind}")

    def train_terms(self, batch, hp):
        return [hp["kl_sparsity"] * kl_sparsity(batch.out["activation"], hp["sparsity_target"])], {}


PART = KLSparsity()
