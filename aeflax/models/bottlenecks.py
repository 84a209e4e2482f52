"""Bottlenecks: map encoder features to the code the decoder reads.

Every bottleneck is called as `bottleneck(h, key=..., train=...)` and returns a dict
with at least `code` (what the decoder decodes). Extra entries feed the objective:
`mean`/`logvar` (gaussian), `vq_loss`/`perplexity` (vector-quantized), `activation`
(the code before top-k, for sparsity penalties).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax.models.layers import activation, dense


def top_k_mask(a: jax.Array, k: int) -> jax.Array:
    """Keep the k largest units of each row (Makhzani & Frey's k-sparse code), zero the rest."""
    kth = jax.lax.top_k(a, k)[0][..., -1:]
    return jnp.where(a >= kth, a, 0.0)


class Deterministic(nnx.Module):
    """Dense(code_size) + activation, optionally k-sparse."""

    def __init__(self, in_features: int, code_size: int, act: str, top_k: int, rngs: nnx.Rngs,
                 init: str = "glorot_uniform"):
        self.linear = dense(in_features, code_size, rngs, init)
        self.act = activation(act)
        self.top_k = top_k
        self.code_size = code_size

    def __call__(self, h, *, key=None, train: bool = False):
        a = self.act(self.linear(h.reshape(h.shape[0], -1)))
        code = top_k_mask(a, self.top_k) if self.top_k else a
        return {"code": code, "activation": a}


class Identity(nnx.Module):
    """The encoder's output itself is the code (the tutorial's conv AE has no dense layer)."""

    def __init__(self):
        pass

    def __call__(self, h, *, key=None, train: bool = False):
        return {"code": h, "activation": h}


class Gaussian(nnx.Module):
    """q(z|x) = N(mean, diag(exp(logvar))); the code is a reparameterized sample.

    Without a key (evaluation, encoding) the code is the mean.
    """

    def __init__(self, in_features: int, code_size: int, rngs: nnx.Rngs, init: str = "glorot_uniform"):
        self.mean = dense(in_features, code_size, rngs, init)
        self.logvar = dense(in_features, code_size, rngs, init)
        self.code_size = code_size

    def stats(self, h):
        h = h.reshape(h.shape[0], -1)
        return self.mean(h), self.logvar(h)

    def __call__(self, h, *, key=None, train: bool = False):
        mean, logvar = self.stats(h)
        code = mean if key is None else sample(key, mean, logvar)
        return {"code": code, "mean": mean, "logvar": logvar}


def sample(key, mean, logvar, num: int | None = None):
    """Reparameterized draw z = mean + exp(logvar / 2) * eps; `num` adds a leading sample axis."""
    shape = mean.shape if num is None else (num, *mean.shape)
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, shape, mean.dtype)
