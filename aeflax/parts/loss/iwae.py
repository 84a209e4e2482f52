"""The k-sample importance-weighted bound (Burda et al. 2016); with k = 1 it is the ELBO
estimate of the same draw. Logs the ELBO's terms beside it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from aeflax.checks import check
from aeflax.parts import bottleneck_of
from aeflax.parts.loss.elbo import ELBO


@dataclass
class Fields:
    likelihood: str = "bernoulli"  # the decoder's p(x|z): bernoulli | gaussian
    likelihood_std: float = 1.0  # gaussian decoder: fixed std of p(x|z) = N(recon, std^2 I)
    k: int = 1  # importance samples


def iwae_bound(log_w):
    """logsumexp_k log w - log k, per image, from log weights [k, B]."""
    return jax.nn.logsumexp(log_w, axis=0) - math.log(log_w.shape[0])


def bound(batch):
    """The bound per image, the same key as the model's draw (k = 1: the ELBO estimate of that z)."""
    lo = batch.cfg.loss
    log_w = bottleneck_of(batch.cfg).importance_log_weights(
        batch.model, batch.x_in, batch.key, lo.k, lo.likelihood, lo.likelihood_std, batch.x)
    return iwae_bound(log_w)


class IWAE(ELBO):
    name = "iwae"
    Fields = Fields

    def validate(self, cfg) -> None:
        lo = cfg.loss
        check(lo.k >= 1, f"loss.k={lo.k} must be >= 1 (importance samples)")
        check(not self.active(cfg) or (lo.beta == 1 and lo.warmup_epochs == 0),
              "loss.beta and loss.warmup_epochs weight the ELBO's KL term; the IWAE bound has none: "
              "use loss=elbo for beta-VAE or KL warm-up")

    def hyperparameters(self, cfg, steps_per_epoch):
        return {}

    def train_terms(self, batch, hp):
        _, _, metrics = self.bound_terms(batch)
        metrics["iwae"] = jnp.mean(bound(batch))
        return -metrics["iwae"], metrics

    def eval_terms(self, batch):
        terms = super().eval_terms(batch)
        terms["iwae"] = bound(batch)
        terms["loss"] = -terms["iwae"]
        return terms


PART = IWAE()
