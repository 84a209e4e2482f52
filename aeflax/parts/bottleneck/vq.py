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


USAGE_DECAY = 0.99  # of the per-code assignment counts that decide which codes are dead
KMEANS_ITERATIONS = 10
KMEANS_POINTS = 4096  # the first batch's vectors k-means reads at most (a conv batch of 256 has 12544)


def reseed_empty(x, codebook):
    """Every code no vector of `x` chooses takes one of the vectors farthest from their codes."""
    idx, z_q = nearest(x, codebook)
    empty = jnp.sum(jax.nn.one_hot(idx, codebook.shape[0], dtype=x.dtype), axis=0) == 0
    far = jax.lax.top_k(jnp.sum((x - z_q) ** 2, axis=-1), codebook.shape[0])[1]
    rank = jnp.clip(jnp.cumsum(empty) - 1, 0, None)  # the e-th empty code takes the e-th farthest vector
    return jnp.where(empty[:, None], x[far[rank]], codebook)


def kmeans(key, x, k: int, iterations: int = KMEANS_ITERATIONS):
    """k centroids of the vectors x [n, D] (n >= k) by Lloyd's algorithm from k distinct vectors; after
    each step an empty cluster is re-seeded (reseed_empty), so every centroid ends with vectors of x."""
    def step(c, _):
        onehot = jax.nn.one_hot(nearest(x, c)[0], k, dtype=x.dtype)
        counts = jnp.sum(onehot, axis=0)
        c = jnp.where(counts[:, None] > 0, onehot.T @ x / jnp.maximum(counts, 1)[:, None], c)
        return reseed_empty(x, c), None

    start = x[jax.random.choice(key, x.shape[0], (k,), replace=x.shape[0] < k)]
    return jax.lax.scan(step, start, None, length=iterations)[0]


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
                 ema_decay: float, rngs: nnx.Rngs, init: str = "glorot_uniform", channels: int = 0,
                 kmeans_init: bool = False, dead_code_threshold: float = 0.0):
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
        self.kmeans_init, self.dead_code_threshold = kmeans_init, dead_code_threshold
        if kmeans_init or dead_code_threshold > 0:  # only then: other runs keep their parameter draws
            self.train_steps = EMA(jnp.zeros((), jnp.int32))
            self.healthy_key = EMA(jax.random.key_data(rngs.params()))
            self.usage = EMA(jnp.zeros((codebook_size,)))  # EMA of each code's assignments per step

    def vectors(self, h):
        """The encoder output as z_e, shaped [B, ..., D]."""
        if self.spatial:
            return self.pre(h)
        return self.pre(h.reshape(h.shape[0], -1)).reshape(h.shape[0], -1, self.embedding_dim)

    def __call__(self, h, *, key=None, train: bool = False):
        z_e = self.vectors(h)
        healthy = train and hasattr(self, "train_steps")
        if healthy and self.kmeans_init:
            self.kmeans_first(jax.lax.stop_gradient(z_e).reshape(-1, self.embedding_dim))
        idx, z_q = nearest(z_e, self.codebook[...])
        sg = jax.lax.stop_gradient
        per_image = lambda t: jnp.mean(t.reshape(t.shape[0], -1), axis=-1)
        commitment = per_image((z_e - sg(z_q)) ** 2)
        codebook = jnp.zeros_like(commitment) if self.ema_decay > 0 else per_image((sg(z_e) - z_q) ** 2)
        onehot = jax.nn.one_hot(idx.reshape(-1), self.codebook.shape[0], dtype=z_e.dtype)
        if train and self.ema_decay > 0:
            self.ema_update(onehot, sg(z_e).reshape(-1, self.embedding_dim))
        probs = jnp.mean(onehot, axis=0)
        more = {}
        if healthy:
            more = self.track_and_restart(onehot, sg(z_e).reshape(-1, self.embedding_dim))
        z = straight_through(z_e, z_q)
        if self.post is not None:
            z = self.post(z)
        code = z if self.spatial else z.reshape(z.shape[0], -1)
        return {"code": code, "z_e": z_e, "z_q": z_q, "indices": idx,
                "codebook_loss": codebook, "commitment_loss": commitment,
                "perplexity": jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10))),
                "codebook_usage": jnp.mean(probs > 0), **more}

    def key(self):
        return jax.random.fold_in(jax.random.wrap_key_data(self.healthy_key[...]), self.train_steps[...])

    def set_entries(self, which, entries, counts):
        """Codes where `which`: new entries (and EMA sums and counts that keep them); the rest as they are."""
        self.codebook[...] = jnp.where(which[:, None], entries, self.codebook[...])
        self.cluster_size[...] = jnp.where(which, counts, self.cluster_size[...])
        self.embed_sum[...] = jnp.where(which[:, None], entries * counts[:, None], self.embed_sum[...])

    def kmeans_first(self, flat):
        """At the first training step the codebook becomes k-means centroids of the batch's vectors."""
        k = self.codebook.shape[0]
        first = self.train_steps[...] == 0
        points = flat[:KMEANS_POINTS]
        entries = jax.lax.cond(first, lambda: kmeans(self.key(), points, k), lambda: self.codebook[...])
        self.set_entries(jnp.full((k,), first), entries, jnp.full((k,), flat.shape[0] / k))

    def track_and_restart(self, onehot, flat):
        """Follow each code's usage; with a threshold, codes used less are re-seeded from this batch's
        vectors (chosen at random) and given an average usage (a grace period before the next restart)."""
        k = onehot.shape[1]
        counts, average = jnp.sum(onehot, axis=0), flat.shape[0] / k
        first = self.train_steps[...] == 0
        usage = jnp.where(first, average, USAGE_DECAY * self.usage[...] + (1 - USAGE_DECAY) * counts)
        dead = usage < self.dead_code_threshold
        if self.dead_code_threshold > 0:
            picks = flat[jax.random.randint(self.key(), (k,), 0, flat.shape[0])]
            self.set_entries(dead, picks, jnp.ones((k,)))
            usage = jnp.where(dead, average, usage)
        self.usage[...] = usage
        self.train_steps[...] = self.train_steps[...] + 1
        dead = dead.astype(jnp.float32)
        return {"dead_codes": jnp.mean(dead), "restarted": jnp.sum(dead)}

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
    kmeans_init: bool = False  # the codebook starts as k-means centroids of the first batch's vectors
    dead_code_threshold: float = 0.0  # > 0: a code whose EMA count of vectors per step falls below it is
    # re-seeded from the batch's encoder outputs (dead-code restart)


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
        check(b.dead_code_threshold >= 0,
              f"bottleneck.dead_code_threshold={b.dead_code_threshold} must be >= 0")
        if b.kmeans_init or b.dead_code_threshold > 0:
            check(self.active(cfg) and b.ema_decay > 0,
                  "bottleneck.kmeans_init and dead_code_threshold rewrite an EMA codebook: they need "
                  f"bottleneck=vq with ema_decay > 0 (got kind={b.kind}, ema_decay={b.ema_decay})")
        check(not (self.active(cfg) and m.architecture == "dense" and b.code_size % b.embedding_dim),
              f"bottleneck.code_size={b.code_size} must be a multiple of bottleneck.embedding_dim="
              f"{b.embedding_dim} (a dense VQ code is code_size / embedding_dim codebook vectors)")

    def build(self, b, in_features, map_channels, rngs, init):
        vq = VectorQuantized(in_features, b.code_size, b.embedding_dim, b.codebook_size, b.ema_decay,
                             rngs, init, channels=map_channels, kmeans_init=b.kmeans_init,
                             dead_code_threshold=b.dead_code_threshold)
        return vq, 0 if map_channels else b.code_size

    def train_terms(self, batch, hp):
        out = batch.out
        codebook, commitment = jnp.mean(out["codebook_loss"]), jnp.mean(out["commitment_loss"])
        health = {k: out[k] for k in ("dead_codes", "restarted") if k in out}
        return [codebook, hp["commitment"] * commitment], {
            "codebook_loss": codebook, "commitment_loss": commitment,
            "perplexity": out["perplexity"], "codebook_usage": out["codebook_usage"], **health}

    def eval_terms(self, batch):
        return {"codebook_loss": batch.out["codebook_loss"], "commitment_loss": batch.out["commitment_loss"]}


PART = VQPart()
