"""The evidence lower bound (Kingma & Welling 2014), with a KL weight (beta-VAE, Higgins et al.
2017) and a linear KL warm-up; the loss is its negative, nats per image."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from aeflax import objectives
from aeflax.checks import check, one_of
from aeflax.parts import Loss, bottleneck_of, traced

LIKELIHOODS = ("bernoulli", "gaussian")


def kl_weight(hp, step):
    """beta, ramped linearly from 0 over `warmup_steps` (KL warm-up) in stairs of `warmup_stair` steps
    (1: every step; an epoch's: the authors' beta = epoch / warmup); beta itself when 0."""
    stair = hp["warmup_stair"]
    ramp = jnp.minimum(1.0, (jnp.floor(step / stair) + 1) * stair / jnp.maximum(hp["warmup_steps"], 1))
    ramp = jnp.where(hp["warmup_steps"] > 0, ramp, 1.0)
    return hp["beta"] * ramp


def log_px(batch):
    """log p(x|z) per image of the decoder's output for the clean target."""
    lo = batch.cfg.loss
    return objectives.log_likelihood(lo.likelihood, batch.out["logits"], batch.out["recon"], batch.x,
                                     lo.likelihood_std)


@dataclass
class Fields:
    likelihood: str = "bernoulli"  # the decoder's p(x|z): bernoulli | gaussian
    likelihood_std: float = 1.0  # gaussian decoder: fixed std of p(x|z) = N(recon, std^2 I)
    beta: float = traced(1.0)  # weight of the KL term (beta-VAE)
    warmup_epochs: int = traced(0, hp="warmup_steps")  # the KL weight ramps linearly from 0 to beta
    warmup_per_epoch: bool = False  # the ramp steps once an epoch, to epoch / warmup_epochs (VampPrior code)


class ELBO(Loss):
    name = "elbo"
    Fields = Fields
    needs_posterior = True

    def bernoulli(self, cfg) -> bool:
        return cfg.loss.likelihood == "bernoulli"

    def validate(self, cfg) -> None:
        lo = cfg.loss
        one_of(lo.likelihood, LIKELIHOODS, "loss.likelihood")
        check(lo.likelihood_std > 0, f"loss.likelihood_std={lo.likelihood_std} must be > 0")
        check(lo.beta >= 0, f"loss.beta={lo.beta} must be >= 0")
        check(lo.warmup_epochs >= 0, f"loss.warmup_epochs={lo.warmup_epochs} must be >= 0")

    def hyperparameters(self, cfg, steps_per_epoch):
        return {"beta": cfg.loss.beta, "warmup_steps": cfg.loss.warmup_epochs * steps_per_epoch,
                "warmup_stair": steps_per_epoch if cfg.loss.warmup_per_epoch else 1}

    def bound_terms(self, batch):
        """(log p(x|z), KL) per image and the metrics every likelihood bound reports."""
        lp, kl = log_px(batch), bottleneck_of(batch.cfg).kl(batch.out)
        return lp, kl, {"elbo": jnp.mean(lp - kl), "kl": jnp.mean(kl), "recon_nll": -jnp.mean(lp)}

    def train_terms(self, batch, hp):
        lp, kl, metrics = self.bound_terms(batch)
        return -jnp.mean(lp - kl_weight(hp, batch.step) * kl), metrics

    def eval_terms(self, batch):
        lp, kl = log_px(batch), bottleneck_of(batch.cfg).kl(batch.out)
        return {"elbo": lp - kl, "kl": kl, "recon_nll": -lp, "loss": kl - lp}


PART = ELBO()
