"""Inverse autoregressive flow on the VAE's posterior (Kingma et al. 2016): each step
z_{t+1} = m_t + exp(s_t) * z_t, where (m_t, s_t) = MADE(z_t, h) is autoregressive in z_t (output i
reads only the inputs before i in the step's order) and reads the encoder's features h as context;
log|det| = sum s_t. The order is reversed from step to step.

The output layers start at 0, so the flow starts as the identity and the model as the plain VAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aeflax.checks import check
from aeflax.models.layers import dense
from aeflax.parts.bottleneck import gaussian


def made_masks(size: int, hidden: int, reverse: bool):
    """(input->hidden [D, H], hidden->output [H, D]) masks of MADE (Germain et al. 2015): output i
    depends on the inputs of lower degree only, so dz'/dz is triangular with diagonal exp(s)."""
    degrees = np.arange(1, size + 1)[::-1] if reverse else np.arange(1, size + 1)
    hidden_degrees = np.arange(hidden) % max(size - 1, 1) + 1
    into = hidden_degrees[None, :] >= degrees[:, None]
    out = degrees[None, :] > hidden_degrees[:, None]
    return jnp.asarray(into, jnp.float32), jnp.asarray(out, jnp.float32)


class IAFStep(nnx.Module):
    def __init__(self, code_size: int, hidden: int, context: int, reverse: bool, rngs: nnx.Rngs, init: str):
        self.code_size, self.hidden_size, self.reverse = code_size, hidden, reverse  # the masks are constants
        self.hidden = dense(code_size, hidden, rngs, init)
        self.context = dense(context, hidden, rngs, init)
        self.m = nnx.Param(jnp.zeros((hidden, code_size)))
        self.s = nnx.Param(jnp.zeros((hidden, code_size)))
        self.m_bias = nnx.Param(jnp.zeros((code_size,)))
        self.s_bias = nnx.Param(jnp.zeros((code_size,)))

    def __call__(self, z, h):
        """(z', log|det dz'/dz|) for z [..., B, D] and context h [B, F]."""
        mask_in, mask_out = made_masks(self.code_size, self.hidden_size, self.reverse)
        a = z @ (self.hidden.kernel[...] * mask_in) + self.hidden.bias[...] + self.context(h)
        a = jax.nn.elu(a)
        m = a @ (self.m[...] * mask_out) + self.m_bias[...]
        s = a @ (self.s[...] * mask_out) + self.s_bias[...]
        return m + jnp.exp(s) * z, jnp.sum(s, axis=-1)


class IAF(gaussian.Gaussian):
    def __init__(self, in_features: int, code_size: int, length: int, hidden: int, rngs: nnx.Rngs,
                 init: str = "glorot_uniform", logvar_bounds: tuple = (None, None)):
        super().__init__(in_features, code_size, rngs, init, logvar_bounds)
        self.steps = nnx.List([IAFStep(code_size, hidden, in_features, i % 2 == 1, rngs, init)
                               for i in range(length)])

    def transform(self, z0, h):
        h = h.reshape(h.shape[0], -1)
        z, logdet = z0, jnp.zeros(z0.shape[:-1], z0.dtype)
        for step in self.steps:
            z, ld = step(z, h)
            logdet = logdet + ld
        return z, logdet


@dataclass
class Fields(gaussian.Fields):
    flow_length: int = 4  # steps of the posterior's flow (shared with bottleneck=planar)
    flow_hidden: int = 128  # IAF: hidden units of each step's MADE


class IAFPart(gaussian.GaussianPart):
    name = "iaf"
    gaussian_posterior = False  # z_K after the flow is not the diagonal Gaussian of mean, logvar
    Fields = Fields

    def validate(self, cfg) -> None:
        super().validate(cfg)
        b = cfg.bottleneck
        check(b.flow_length >= 1, f"bottleneck.flow_length={b.flow_length} must be >= 1 (steps of the flow)")
        check(b.flow_hidden >= 1, f"bottleneck.flow_hidden={b.flow_hidden} must be >= 1 (MADE's units)")

    def build(self, b, in_features, map_channels, rngs, init):
        bounds = gaussian.logvar_bounds(b)
        return IAF(in_features, b.code_size, b.flow_length, b.flow_hidden, rngs, init, bounds), b.code_size


PART = IAFPart()
