"""Vector quantization (van den Oord et al. 2017): each D-vector of the encoder's output is
replaced by its nearest codebook entry; optionally an EMA codebook (Sonnet's VectorQuantizerEMA)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax.checks import check
from aeflax.models.layers import dense
from aeflax.parts import Bottleneck, traced


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


@dataclass
class Fields:
    code_size: int = 64
    codebook_size: int = 512
    embedding_dim: int = 8  # size of each codebook vector (dense: code_size / D vectors per image)
    commitment: float = traced(0.25)  # weight of the commitment loss
    ema_decay: float = 0.0  # > 0 updates the codebook by EMA instead of gradients


class VQPart(Bottleneck):
    name = "vq"
    Fields = Fields
    smooth_code = False  # a quantized code is piecewise constant

    def validate(self, cfg) -> None:
        b, m = cfg.bottleneck, cfg.model
        check(b.code_size >= 1, f"bottleneck.code_size={b.code_size} must be >= 1 (the size of the code)")
        check(b.codebook_size >= 1, f"bottleneck.codebook_size={b.codebook_size} must be >= 1")
        check(b.commitment >= 0, f"bottleneck.commitment={b.commitment} must be >= 0")
        check(0 <= b.ema_decay < 1, f"bottleneck.ema_decay={b.ema_decay} must be in [0, 1)")
        check(b.embedding_dim >= 1, f"bottleneck.embedding_dim={b.embedding_dim} must be >= 1")
        check(b.ema_decay == 0 or self.active(cfg),
              f"bottleneck.ema_decay is for bottleneck=vq, not {b.kind}")
        check(not (self.active(cfg) and m.architecture == "dense" and b.code_size % b.embedding_dim),
              f"bottleneck.code_size={b.code_size} must be a multiple of bottleneck.embedding_dim="
              f"{b.embedding_dim} (a dense VQ code is code_size / embedding_dim codebook vectors)")

    def build(self, b, in_features, map_channels, rngs, init):
        vq = VectorQuantized(in_features, b.code_size, b.embedding_dim, b.codebook_size, b.ema_decay,
                             rngs, init, channels=map_channels)
        return vq, 0 if map_channels else b.code_size

    def train_terms(self, batch, hp):
        out = batch.out
        codebook, commitment = jnp.mean(out["codebook_loss"]), jnp.mean(out["commitment_loss"])
        return [codebook, hp["commitment"] * commitment], {
            "codebook_loss": codebook, "commitment_loss": commitment,
            "perplexity": out["perplexity"], "codebook_usage": out["codebook_usage"]}

    def eval_terms(self, batch):
        return {"codebook_loss": batch.out["codebook_loss"], "commitment_loss": batch.out["commitment_loss"]}


PART = VQPart()
