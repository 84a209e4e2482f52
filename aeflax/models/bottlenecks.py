"""Bottlenecks: map encoder features to the code the decoder reads.

Every bottleneck is called as `bottleneck(h, key=..., train=...)` and returns a dict
with at least `code` (what the decoder decodes). Extra entries feed the objective:
`activation` (deterministic: the code before top-k, for sparsity penalties and the
contractive Jacobian), `mean`/`logvar` (gaussian), and for the vector-quantized one
`codebook_loss`/`commitment_loss` per image, `perplexity` and `codebook_usage`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax.models.layers import activation, dense


def top_k_mask(a: jax.Array, k: int) -> jax.Array:
    """Keep exactly the k largest units of each row (Makhzani & Frey's k-sparse code), zero the rest.

    Gradients flow through the kept units only; ties are broken by position, so no row
    ever keeps more than k units.
    """
    idx = jax.lax.top_k(a, k)[1]
    rows = jnp.arange(a.shape[0])[:, None]
    return a * jnp.zeros_like(a).at[rows, idx].set(1.0)


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


# --- vector quantization (van den Oord et al. 2017) ------------------------------------

def nearest(z_e, codebook):
    """Indices of the nearest codebook entries (squared Euclidean) and the entries: z_q like z_e."""
    dist = jnp.sum(z_e**2, -1, keepdims=True) - 2 * z_e @ codebook.T + jnp.sum(codebook**2, -1)
    idx = jnp.argmin(dist, axis=-1)
    return idx, codebook[idx]


def straight_through(z_e, z_q):
    """The value of z_q with the gradient of z_e: the decoder's gradient passes to the encoder."""
    return z_e + jax.lax.stop_gradient(z_q - z_e)


class EMA(nnx.Variable):
    """State updated by exponential moving averages, never by the optimizer (not an nnx.Param)."""


class VectorQuantized(nnx.Module):
    """Each D-vector of the encoder's output is replaced by its nearest codebook entry.

    Dense encoders: Dense(code_size) then `code_size / D` vectors, a flat code for the
    decoder. Conv encoders (`channels > 0`): every position of the feature map is a vector
    (a per-position Linear to D channels and back when D differs from the map's channels),
    the quantized map is the code. The decoder sees z_e + stop_gradient(z_q - z_e): the value
    of z_q, the gradient of z_e (straight-through). With `ema_decay > 0` the codebook follows
    exponential moving averages of its assigned vectors (Laplace-smoothed counts) instead of
    the codebook loss.
    """

    def __init__(self, in_features: int, code_size: int, embedding_dim: int, codebook_size: int,
                 ema_decay: float, rngs: nnx.Rngs, init: str = "glorot_uniform", channels: int = 0):
        self.embedding_dim = embedding_dim
        self.ema_decay = ema_decay
        self.spatial = channels > 0
        if self.spatial:
            self.pre = dense(channels, embedding_dim, rngs, init)
            self.post = dense(embedding_dim, channels, rngs, init) if embedding_dim != channels else None
        else:
            self.pre = dense(in_features, code_size, rngs, init)
            self.post = None
        codebook_init = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=-1, out_axis=-2)
        entries = codebook_init(rngs.params(), (codebook_size, embedding_dim))
        if ema_decay > 0:
            self.codebook = EMA(entries)
            self.cluster_size = EMA(jnp.ones((codebook_size,)))
            self.embed_sum = EMA(jnp.array(entries, copy=True))  # its own buffer (donation)
        else:
            self.codebook = nnx.Param(entries)

    def vectors(self, h):
        """The encoder output as z_e, shaped [B, ..., D]."""
        if self.spatial:
            return self.pre(h)
        return self.pre(h.reshape(h.shape[0], -1)).reshape(h.shape[0], -1, self.embedding_dim)

    def __call__(self, h, *, key=None, train: bool = False):
        z_e = self.vectors(h)
        idx, z_q = nearest(z_e, self.codebook[...])
        sg = jax.lax.stop_gradient
        per_image = lambda t: jnp.mean(t.reshape(t.shape[0], -1), axis=-1)
        commitment = per_image((z_e - sg(z_q)) ** 2)
        codebook = jnp.zeros_like(commitment) if self.ema_decay > 0 else per_image((sg(z_e) - z_q) ** 2)
        onehot = jax.nn.one_hot(idx.reshape(-1), self.codebook.shape[0], dtype=z_e.dtype)
        if train and self.ema_decay > 0:
            self.ema_update(onehot, sg(z_e).reshape(-1, self.embedding_dim))
        probs = jnp.mean(onehot, axis=0)
        z = straight_through(z_e, z_q)
        if self.post is not None:
            z = self.post(z)
        code = z if self.spatial else z.reshape(z.shape[0], -1)
        return {"code": code, "z_e": z_e, "z_q": z_q, "indices": idx,
                "codebook_loss": codebook, "commitment_loss": commitment,
                "perplexity": jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10))),
                "codebook_usage": jnp.mean(probs > 0)}

    def ema_update(self, onehot, flat, eps: float = 1e-5):
        """Sonnet's VectorQuantizerEMA step: decay counts and sums, re-centre every entry."""
        g = self.ema_decay
        self.cluster_size[...] = g * self.cluster_size[...] + (1 - g) * jnp.sum(onehot, axis=0)
        self.embed_sum[...] = g * self.embed_sum[...] + (1 - g) * onehot.T @ flat
        n = jnp.sum(self.cluster_size[...])
        counts = (self.cluster_size[...] + eps) / (n + onehot.shape[1] * eps) * n
        self.codebook[...] = self.embed_sum[...] / counts[:, None]
