"""DIP-VAE (Kumar et al. 2018): the ELBO plus a penalty pulling the covariance of the codes towards I,
lambda_od sum_{i != j} C_ij^2 + lambda_d sum_i (C_ii - 1)^2.

DIP-VAE I takes C = Cov[mean(x)] (the encoder means over the batch); DIP-VAE II the covariance of the
aggregate posterior, C = Cov[mean(x)] + E[diag(exp(logvar(x)))].
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from aeflax.checks import one_of
from aeflax.parts import Penalty, traced
from aeflax.parts.penalty.total_correlation import check_gaussian_posterior

KINDS = ("i", "ii")


def code_covariance(mean, logvar, kind: str):
    """The batch estimate of C, [D, D] (DIP-VAE I: of the means; II: of the aggregate posterior)."""
    centred = mean - jnp.mean(mean, axis=0)
    cov = centred.T @ centred / mean.shape[0]
    return cov + jnp.diag(jnp.mean(jnp.exp(logvar), axis=0)) if kind == "ii" else cov


def dip_penalty(cov, offdiag, diag):
    """offdiag * sum of squared off-diagonal entries + diag * sum of squared (diagonal - 1)."""
    d = jnp.diagonal(cov)
    off = cov - jnp.diag(d)  # not sum(cov**2) - sum(d**2): that cancels to float32 rounding (~1e-7 x weight)
    return offdiag * jnp.sum(off**2) + diag * jnp.sum((d - 1) ** 2)


@dataclass
class Fields:
    dip_offdiag: float = traced(0.0)  # lambda_od
    dip_diag: float = traced(0.0)  # lambda_d (Kumar et al.: 10 lambda_od for DIP-VAE I, lambda_od for II)
    dip_kind: str = "i"  # i: Cov of the means | ii: Cov of the aggregate posterior


class DIP(Penalty):
    name = "dip"
    Fields = Fields
    weights = ("dip_offdiag", "dip_diag")

    def validate(self, cfg) -> None:
        super().validate(cfg)
        one_of(cfg.penalty.dip_kind, KINDS, "penalty.dip_kind")
        if self.active(cfg):
            check_gaussian_posterior(cfg, "penalty.dip_offdiag / dip_diag")

    def train_terms(self, batch, hp):
        cov = code_covariance(batch.out["mean"], batch.out["logvar"], batch.cfg.penalty.dip_kind)
        value = dip_penalty(cov, hp["dip_offdiag"], hp["dip_diag"])
        return [value], {"dip": value}


PART = DIP()
