"""MMD between the batch's codes and prior samples: the Wasserstein autoencoder's penalty (WAE-MMD,
Tolstikhin et al. 2018) and, added to the ELBO, InfoVAE / MMD-VAE (Zhao et al. 2019).

The codes are `out["code"]` (a posterior's reparameterized sample in training); the prior is the
bottleneck's own (`prior_sample`) when it has a posterior, else N(0, I) as in the WAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from aeflax.checks import check, one_of
from aeflax.parts import Penalty, bottleneck_of, traced

KERNELS = ("imq", "rbf")


def kernel(kind: str, x, y, scale):
    """k(x_i, y_j) for every pair, [n, m]. C = 2 d scale (d the code size; WAE: C = 2 d sigma^2 for a
    N(0, sigma^2 I) prior): IMQ C / (C + ||x - y||^2), RBF exp(-||x - y||^2 / C). Both give k(x, x) = 1."""
    d2 = jnp.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)  # exact 0 at i = j
    c = 2.0 * x.shape[-1] * scale
    return c / (c + d2) if kind == "imq" else jnp.exp(-d2 / c)


def mmd(x, y, kind: str = "imq", scale=1.0, unbiased: bool = True):
    """MMD^2 between samples x [n, d] and y [m, d] under the kernel.

    unbiased: the U-statistic of WAE's Algorithm 2 (pairs i != j within a sample), which can be
    slightly negative; else the V-statistic (all pairs), exactly 0 for x = y.
    """
    kxx, kyy, kxy = kernel(kind, x, x, scale), kernel(kind, y, y, scale), kernel(kind, x, y, scale)
    if not unbiased:
        return jnp.mean(kxx) + jnp.mean(kyy) - 2 * jnp.mean(kxy)
    n, m = x.shape[0], y.shape[0]
    within = lambda k, s: (jnp.sum(k) - jnp.trace(k)) / (s * (s - 1))  # noqa: E731
    return within(kxx, n) + within(kyy, m) - 2 * jnp.mean(kxy)


def prior_codes(batch, n: int):
    """n draws of the code's prior: the bottleneck's prior, else N(0, I) shaped like the flat code."""
    b = bottleneck_of(batch.cfg)
    key = jax.random.fold_in(batch.key, 1)  # independent of the posterior's draw (batch.key)
    if b.posterior:
        return b.prior_sample(key, n, batch.cfg.bottleneck, batch.model).reshape(n, -1)
    code = batch.out["code"]
    return jax.random.normal(key, (n, code[0].size), code.dtype)


@dataclass
class Fields:
    mmd: float = traced(0.0)  # weight lambda of MMD^2(codes, prior samples)
    mmd_kernel: str = "imq"  # imq (WAE) | rbf (InfoVAE)
    mmd_scale: float = traced(1.0)  # the kernel's C = 2 * code size * mmd_scale


class MMD(Penalty):
    name = "mmd"
    Fields = Fields
    weights = ("mmd",)

    def validate(self, cfg) -> None:
        super().validate(cfg)
        p, b = cfg.penalty, bottleneck_of(cfg)
        one_of(p.mmd_kernel, KERNELS, "penalty.mmd_kernel")
        check(p.mmd_scale > 0, f"penalty.mmd_scale={p.mmd_scale} must be > 0 (the kernel's bandwidth)")
        if self.active(cfg):
            check(b.smooth_code, f"penalty.mmd needs a continuous code, not bottleneck={b.name}; "
                                 "use bottleneck=deterministic (activation=identity) or gaussian")
            check(cfg.train.batch_size >= 2, "penalty.mmd needs train.batch_size >= 2 (pairs of codes)")

    def train_terms(self, batch, hp):
        code = batch.out["code"].reshape(batch.out["code"].shape[0], -1)
        value = mmd(code, prior_codes(batch, code.shape[0]), batch.cfg.penalty.mmd_kernel, hp["mmd_scale"])
        return [hp["mmd"] * value], {"mmd": value}


PART = MMD()
