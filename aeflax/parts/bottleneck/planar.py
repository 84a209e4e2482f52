"""Planar flows on the VAE's posterior (Rezende & Mohamed 2015, the flow Kingma et al. 2016 compare
IAF with): z_{t+1} = z_t + u_t tanh(w_t . z_t + b_t), log|det| = log|1 + (1 - tanh^2) w_t . u_t|.

The flow's parameters are global (not amortized). u starts at 0, so the flow starts as the identity
and the model as the plain VAE (w starts small and random: with u = w = 0 no gradient reaches
either). The ELBO's KL and the IS-NLL's log q(z|x) include the log-determinant through the Gaussian
bottleneck's `transform` hook.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax.checks import check
from aeflax.parts.bottleneck import gaussian


def planar_step(z, u, w, b):
    """One planar step on z [..., D]: (z', log|det dz'/dz|) [...].

    u is first made to satisfy w . u >= -0.999 (invertibility, Rezende & Mohamed's appendix A; a
    clamp rather than their softplus, so that u = 0 stays exactly the identity)."""
    a = jnp.dot(w, u)
    u = u + (jnp.maximum(a, -0.999) - a) * w / jnp.maximum(jnp.sum(w**2), 1e-12)
    t = jnp.tanh(z @ w + b)
    return z + t[..., None] * u, jnp.log1p((1 - t**2) * jnp.dot(w, u))


class Planar(gaussian.Gaussian):
    def __init__(self, in_features: int, code_size: int, length: int, rngs: nnx.Rngs,
                 init: str = "glorot_uniform", logvar_bounds: tuple = (None, None)):
        super().__init__(in_features, code_size, rngs, init, logvar_bounds)
        self.u = nnx.Param(jnp.zeros((length, code_size)))
        self.w = nnx.Param(0.01 * jax.random.normal(rngs.params(), (length, code_size)))
        self.b = nnx.Param(jnp.zeros((length,)))

    def transform(self, z0, h):
        z, logdet = z0, jnp.zeros(z0.shape[:-1], z0.dtype)
        for u, w, b in zip(self.u[...], self.w[...], self.b[...], strict=True):
            z, ld = planar_step(z, u, w, b)
            logdet = logdet + ld
        return z, logdet


@dataclass
class Fields(gaussian.Fields):
    flow_length: int = 4  # steps of the posterior's flow (shared with bottleneck=iaf)


class PlanarPart(gaussian.GaussianPart):
    name = "planar"
    gaussian_posterior = False  # z_K after the flow is not the diagonal Gaussian of mean, logvar
    Fields = Fields

    def validate(self, cfg) -> None:
        super().validate(cfg)
        n = cfg.bottleneck.flow_length
        check(n >= 1, f"bottleneck.flow_length={n} must be >= 1 (steps of the flow)")

    def build(self, b, in_features, map_channels, rngs, init):
        bounds = gaussian.logvar_bounds(b)
        return Planar(in_features, b.code_size, b.flow_length, rngs, init, bounds), b.code_size


PART = PlanarPart()
