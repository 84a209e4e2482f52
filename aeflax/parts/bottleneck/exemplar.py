"""The Exemplar VAE's prior (Norouzi, Fleet & Norouzi 2020): a Parzen window over the codes of the
training images, p(z) = (1/N) sum_n N(z; mu(x_n), sigma^2 I), where mu is the posterior's own mean
network and sigma^2 one learned scalar; q(z|x) is the VAE's.

Training follows the paper (section 3 and the authors' code): an image's prior leaves its own
exemplar out, over M exemplars drawn uniformly each step (exemplar subsampling,
`bottleneck.exemplar_sample`), re-encoded with gradients: all M (`exemplar_knn: 0`, the exact
prior, the authors' Table 1 runs) or only the k nearest of them (`exemplar_knn: k`, retrieval
augmented training: a lower bound, found in the cache, the codes of every training image as the
last epoch left them). The compiled epoch refreshes that cache before the first epoch and after
each (`refresh`), so it is checkpointed with the state and is the final encoder's at the end:
evaluation (the ELBO, the importance-sampled NLL) and prior samples use the exact mixture over
all N codes, no exemplar left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax import objectives
from aeflax.checks import check
from aeflax.parts import loss_of
from aeflax.parts.bottleneck import gaussian

CACHE_CHUNK = 1000  # training images encoded at a time when the cache is refreshed
KERNEL_BUDGET = 2**24  # most kernel values [..., chunk of exemplars] held at once (64 MiB in float32)


def squared_distances(z, means):
    """|z - means_m|^2 for z [..., D] and means [M, D]: [..., M], as |z|^2 - 2 z.mean + |mean|^2
    (memory [..., M], not [..., M, D])."""
    sq = jnp.sum(z**2, -1, keepdims=True) - 2 * z @ means.T + jnp.sum(means**2, -1)
    return jnp.maximum(sq, 0.0)  # rounding can take a distance of 0 below it


def log_kernels(z, means, logvar):
    """log N(z; means_m, exp(logvar) I) for z [..., D], means [M, D] and a scalar logvar: [..., M]."""
    sq = squared_distances(z, means)
    return -0.5 * (z.shape[-1] * (objectives.LOG_2PI + logvar) + sq / jnp.exp(logvar))


def log_parzen(z, means, logvar, budget: int = KERNEL_BUDGET):
    """log (1/M) sum_m N(z; means_m, exp(logvar) I) over the last axis of z [..., D].

    Exact, over every row of `means`, a chunk of rows at a time (logsumexp per chunk, then over the
    chunks): the NLL scores 250 draws x 500 images against 50,000 exemplars."""
    z, means, m = jnp.asarray(z), jnp.asarray(means), means.shape[0]
    chunk = max(1, min(m, budget // max(1, math.prod(z.shape[:-1]))))
    n_chunks = -(-m // chunk)
    rows = jnp.arange(n_chunks * chunk).reshape(n_chunks, chunk)

    def one(r):
        log_k = log_kernels(z, means[jnp.minimum(r, m - 1)], logvar)
        return jax.nn.logsumexp(jnp.where(r < m, log_k, -jnp.inf), axis=-1)  # padding rows count 0

    return jax.nn.logsumexp(jax.lax.map(one, rows), axis=0) - math.log(m)


def exemplar_means(model, images):
    """mu(x) of uint8 images at grey levels x / 255, as the authors encode exemplars (a binarized
    training image is the batch's, not an exemplar's)."""
    return model.bottleneck.stats(model.encoder(images.astype(jnp.float32) / 255.0))[0]


def encode_all(model, images, chunk: int = CACHE_CHUNK):
    """exemplar_means of every image of the split [N, ...], `chunk` images at a time: [N, D]."""
    images, n = jnp.asarray(images), images.shape[0]
    chunk = min(chunk, n)
    idx = jnp.minimum(jnp.arange(-(-n // chunk) * chunk), n - 1).reshape(-1, chunk)
    means = jax.lax.map(lambda i: exemplar_means(model, images[i]), idx)
    return means.reshape(-1, means.shape[-1])[:n]


def leave_one_out_log_prior(model, z, mean, images, idx, key, sample: Optional[int], knn: int):
    """The training prior of each batch image [B] at its draw z [B, D]: the mixture over M exemplars
    drawn uniformly with replacement (all N, in order, when `sample` is None), its own exemplar
    (`idx`, its index in `images`) left out, normalised by the number left; with knn > 0 only the
    knn nearest of them to its posterior mean in the cache `model.bottleneck.codes` contribute (the
    paper's retrieval augmented training: dropping terms lowers the bound). The exemplars that
    contribute are re-encoded: the prior's means carry gradients, the cache does not."""
    images, n = jnp.asarray(images), images.shape[0]
    drawn = jnp.arange(n) if sample is None else jax.random.randint(key, (sample,), 0, n)  # [M]
    own = drawn[None, :] == idx[:, None]  # [B, M]
    others = drawn.shape[0] - jnp.sum(own, axis=-1)  # [B]: the left-out mixture's size
    logvar = model.bottleneck.prior_logvar[...]
    if knn:
        cached = model.bottleneck.codes[...][drawn]  # [M, D]
        dist = squared_distances(jax.lax.stop_gradient(mean), cached)
        score, nearest = jax.lax.top_k(jnp.where(own, -jnp.inf, -dist), min(knn, drawn.shape[0]))
        chosen = drawn[nearest]  # [B, k]
        means = exemplar_means(model, images[chosen.reshape(-1)]).reshape(*chosen.shape, -1)
        log_k = objectives.log_normal(z[:, None, :], means, logvar)  # [B, k]
        log_k = jnp.where(score > -jnp.inf, log_k, -jnp.inf)  # fewer than k others were drawn
    else:
        log_k = jnp.where(own, -jnp.inf, log_kernels(z, exemplar_means(model, images[drawn]), logvar))
    return jax.nn.logsumexp(log_k, axis=-1) - jnp.log(others)


class ExemplarCodes(nnx.Variable):
    """The codes of the training images (not a parameter: the compiled epoch recomputes them)."""


class Exemplar(gaussian.Gaussian):
    """The Gaussian bottleneck with the Exemplar prior: one learned log-variance `prior_logvar`, and
    `codes` [N, D], the cache of the training images' codes (ExemplarPart.attach_exemplars)."""

    def __init__(self, in_features: int, code_size: int, rngs: nnx.Rngs, init: str = "glorot_uniform",
                 logvar_bounds: tuple = (None, None)):
        super().__init__(in_features, code_size, rngs, init, logvar_bounds)
        self.prior_logvar = nnx.Param(jax.random.normal(rngs.params(), ()))  # the authors' randn(1)

    def log_prior(self, z):
        return log_parzen(z, self.codes[...], self.prior_logvar[...])

    def prior_sample(self, key, n: int):
        """An exemplar picked uniformly, its code, plus sigma times a standard normal draw."""
        codes = self.codes[...]
        k_pick, k_draw = jax.random.split(key)
        picked = codes[jax.random.randint(k_pick, (n,), 0, codes.shape[0])]
        return picked + jnp.exp(0.5 * self.prior_logvar[...]) * jax.random.normal(k_draw, picked.shape)

    def __call__(self, h, *, key=None, train: bool = False):
        out = super().__call__(h, key=key, train=train)
        out["log_prior"] = self.log_prior(out["code"])  # a training step replaces it (train_outputs)
        return out


@dataclass
class Fields(gaussian.Fields):
    exemplar_sample: Optional[int] = 25000  # M exemplars drawn per step for the prior; null = all N
    exemplar_knn: int = 10  # 0: the prior over all M, re-encoded; k: over the k nearest of them


class ExemplarPart(gaussian.GaussianPart):
    name = "exemplar"
    Fields = Fields
    exemplars = True

    def validate(self, cfg) -> None:
        super().validate(cfg)
        b = cfg.bottleneck
        check(b.exemplar_sample is None or b.exemplar_sample >= 1,
              f"bottleneck.exemplar_sample={b.exemplar_sample} must be >= 1 (or null for every exemplar)")
        check(b.exemplar_knn >= 0, f"bottleneck.exemplar_knn={b.exemplar_knn} must be >= 0 (0: no retrieval)")
        if self.active(cfg):
            check(loss_of(cfg).name != "iwae", "bottleneck.kind=exemplar trains with loss=elbo: the IWAE "
                  "bound would score its draws with the cached prior, which keeps each image's own exemplar")

    def build(self, b, in_features, map_channels, rngs, init):
        return Exemplar(in_features, b.code_size, rngs, init, gaussian.logvar_bounds(b)), b.code_size

    def attach_exemplars(self, b, module, num_train):
        if num_train < 1:
            raise ValueError("bottleneck.kind=exemplar keeps the codes of the training images: build the "
                             "model with num_train=len(dataset.train)")
        module.codes = ExemplarCodes(jnp.zeros((num_train, b.code_size)))

    def refresh(self, model, images):
        model.bottleneck.codes[...] = encode_all(model, images)

    def train_outputs(self, batch):
        if batch.images is None:
            raise ValueError("bottleneck.kind=exemplar trains on the whole training split: objectives."
                             "loss_and_metrics(..., images=<the split>, idx=<the batch's indices>)")
        b, out = batch.cfg.bottleneck, batch.out
        key = jax.random.fold_in(batch.key, 1)  # the exemplars drawn: independent of the code's draw
        return {"log_prior": leave_one_out_log_prior(batch.model, out["code"], out["mean"], batch.images,
                                                     batch.idx, key, b.exemplar_sample, b.exemplar_knn)}

    def train_terms(self, batch, hp):
        return [], {"prior_logvar": batch.model.bottleneck.prior_logvar[...]}

    def kl(self, out):
        """log q(z|x) - log p(z) at the draw z the decoder reads (no closed form to a mixture)."""
        return objectives.log_normal(out["code"], out["mean"], out["logvar"]) - out["log_prior"]


PART = ExemplarPart()
