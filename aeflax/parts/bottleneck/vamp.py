"""The VampPrior (Tomczak & Welling 2018): the prior is the mixture of the variational posteriors at
K learned pseudo-inputs, p(z) = (1/K) sum_k q(z|u_k); q(z|x) is the VAE's.

There is no closed-form KL to a mixture: the ELBO uses the single-sample estimate
log q(z|x) - log p(z) at the draw the decoder reads; the IWAE bound and the importance-sampled
NLL read `log_prior` through the Gaussian bottleneck's `importance_log_weights`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax import objectives
from aeflax.checks import check
from aeflax.parts.bottleneck import gaussian


def log_mixture(z, means, logvars):
    """log (1/K) sum_k N(z; means_k, diag(exp(logvars_k))) over the last axis of z [..., D].

    The squared distances as matmuls, z^2 / var - 2 z mean / var + mean^2 / var: memory
    [..., K], not [..., K, D] (the NLL scores 250 draws x 500 images x 500 components).
    """
    inv_var = jnp.exp(-logvars)  # [K, D]
    quad = (z**2) @ inv_var.T - 2 * z @ (means * inv_var).T + jnp.sum(means**2 * inv_var, axis=-1)
    log_n = -0.5 * (z.shape[-1] * objectives.LOG_2PI + jnp.sum(logvars, axis=-1) + quad)
    return jax.nn.logsumexp(log_n, axis=-1) - math.log(means.shape[0])


class Vamp(gaussian.Gaussian):
    """The Gaussian bottleneck with the VampPrior; `encoder` and `pseudo_inputs` come from
    VampPart.attach (the encoder is the model's own, shared, not a copy)."""

    def prior_stats(self):
        """(means, logvars) [K, D] of q(z|u_k); pseudo-inputs are clipped to [0, 1] (the paper's hardtanh)."""
        return self.stats(self.encoder(jnp.clip(self.pseudo_inputs[...], 0.0, 1.0)))

    def log_prior(self, z):
        return log_mixture(z, *self.prior_stats())

    def prior_sample(self, key, n: int):
        """A pseudo-input's posterior picked uniformly, then a draw from it."""
        means, logvars = self.prior_stats()
        k_pick, k_draw = jax.random.split(key)
        idx = jax.random.randint(k_pick, (n,), 0, means.shape[0])
        return gaussian.sample(k_draw, means[idx], logvars[idx])

    def __call__(self, h, *, key=None, train: bool = False):
        out = super().__call__(h, key=key, train=train)
        out["log_prior"] = self.log_prior(out["code"])
        return out


@dataclass
class Fields(gaussian.Fields):
    pseudo_inputs: int = 500  # K, the mixture's components (the paper's 500 on MNIST)


class VampPart(gaussian.GaussianPart):
    name = "vamp"
    Fields = Fields

    def validate(self, cfg) -> None:
        super().validate(cfg)
        k = cfg.bottleneck.pseudo_inputs
        check(k >= 1, f"bottleneck.pseudo_inputs={k} must be >= 1 (the VampPrior's components)")

    def build(self, b, in_features, map_channels, rngs, init):
        return Vamp(in_features, b.code_size, rngs, init, gaussian.logvar_bounds(b)), b.code_size

    def attach(self, b, module, encoder, image_shape, rngs):
        module.encoder = encoder
        shape = (b.pseudo_inputs, *image_shape)  # the paper's initialisation: N(0.05, 0.01^2)
        module.pseudo_inputs = nnx.Param(0.05 + 0.01 * jax.random.normal(rngs.params(), shape))

    def kl(self, out):
        """log q(z|x) - log p(z) at the draw z the decoder reads (no closed form to a mixture);
        with a flow (a module that is also a flow's), log q(z|x) = log q0(z0|x) - log|det|."""
        log_q = objectives.log_normal(out.get("z0", out["code"]), out["mean"], out["logvar"])
        return log_q - out.get("logdet", 0.0) - out["log_prior"]


PART = VampPart()
