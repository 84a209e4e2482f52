"""beta-TCVAE (Chen et al. 2018): the ELBO plus `tc` times the total correlation of the aggregate posterior.

The KL term splits as index-code MI + total correlation + dimension-wise KL, each estimated on the
minibatch from log q(z_i | x_j) for every pair (i, j). With the ELBO's analytic KL (weight 1), adding
(beta - 1) TC is Chen et al.'s objective with alpha = gamma = 1 and TC weight beta.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
from jax.scipy.special import logsumexp

from aeflax.checks import check, one_of
from aeflax.objectives import LOG_2PI
from aeflax.parts import Penalty, bottleneck_of, traced

ESTIMATORS = ("mss", "mws")


def log_q_pairs(z, mean, logvar):
    """log q(z_id | x_j) for every code i, image j and dimension d: [B, B, D]."""
    return -0.5 * (LOG_2PI + logvar[None] + (z[:, None] - mean[None]) ** 2 / jnp.exp(logvar[None]))


def log_weights(batch_size: int, dataset_size, estimator: str):
    """[B, B] log-weights of image j in the estimate q(z_i) ~ sum_j w_ij q(z_i | x_j).

    mws (minibatch-weighted sampling): 1 / (N M) for every j, as in the paper: the split into MI, TC
    and dimension-wise KL is then offset by multiples of log N (their sum and every gradient are not).
    mss (minibatch-stratified sampling): 1 / N for i itself, (N - M) / (N M) for one other image,
    1 / M for the rest (M = B - 1): the weights of each row sum to 1.
    """
    n = jnp.asarray(dataset_size, jnp.float32)
    if estimator == "mws":
        return jnp.full((batch_size, batch_size), -jnp.log(n * batch_size))
    m = batch_size - 1
    eye = jnp.eye(batch_size)
    other = jnp.roll(eye, 1, axis=1)  # the stratum's one other image: i + 1 (mod B)
    w = eye / n + other * (n - m) / (n * m) + (1 - eye - other) / m
    return jnp.log(w)


def decomposition(z, mean, logvar, dataset_size, estimator: str = "mss"):
    """(index-code MI, total correlation, dimension-wise KL against N(0, I)), batch means.

    They sum to the batch mean of log q(z|x) - log p(z): a one-sample estimate of KL(q(z|x) || p(z)).
    """
    pairs = log_q_pairs(z, mean, logvar)
    logw = log_weights(z.shape[0], dataset_size, estimator)
    log_qz_x = jnp.sum(jnp.diagonal(pairs, axis1=0, axis2=1), axis=0)  # [B]: q(z_i | x_i)
    log_qz = logsumexp(logw + jnp.sum(pairs, axis=-1), axis=1)
    log_prod_qzd = jnp.sum(logsumexp(logw[..., None] + pairs, axis=1), axis=-1)
    log_pz = -0.5 * jnp.sum(LOG_2PI + z**2, axis=-1)
    return (jnp.mean(log_qz_x - log_qz), jnp.mean(log_qz - log_prod_qzd), jnp.mean(log_prod_qzd - log_pz))


def check_gaussian_posterior(cfg, keys: str) -> None:
    """The penalties that read q(z|x)'s mean and logvar (beta-TCVAE, DIP-VAE) refuse other bottlenecks."""
    b = bottleneck_of(cfg)
    check(b.gaussian_posterior,
          f"{keys} needs a diagonal Gaussian q(z|x) (bottleneck=gaussian), not bottleneck={b.name}")


@dataclass
class Fields:
    tc: float = traced(0.0)  # weight of the total correlation added to the ELBO (beta - 1 of beta-TCVAE)
    tc_estimator: str = "mss"  # mss (minibatch-stratified) | mws (minibatch-weighted)


class TotalCorrelation(Penalty):
    name = "total_correlation"
    Fields = Fields
    weights = ("tc",)

    def validate(self, cfg) -> None:
        super().validate(cfg)
        one_of(cfg.penalty.tc_estimator, ESTIMATORS, "penalty.tc_estimator")
        if self.active(cfg):
            check_gaussian_posterior(cfg, "penalty.tc")
            check(cfg.train.batch_size >= 3, "penalty.tc needs train.batch_size >= 3 (minibatch estimates)")

    def hyperparameters(self, cfg, steps_per_epoch):
        # N, the training images an epoch sees: the estimators weigh the minibatch against it
        return {**super().hyperparameters(cfg, steps_per_epoch),
                "tc_dataset_size": steps_per_epoch * cfg.train.batch_size}

    def train_terms(self, batch, hp):
        out = batch.out
        mi, tc, dwkl = decomposition(out["code"], out["mean"], out["logvar"], hp["tc_dataset_size"],
                                     batch.cfg.penalty.tc_estimator)
        return [hp["tc"] * tc], {"mi": mi, "tc": tc, "dimwise_kl": dwkl}


PART = TotalCorrelation()
