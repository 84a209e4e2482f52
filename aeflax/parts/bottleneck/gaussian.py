"""The VAE's bottleneck: q(z|x) = N(mean, diag(exp(logvar))), prior N(0, I) (Kingma & Welling 2014).

Other priors and posteriors are bottleneck kinds that subclass this one (vamp: a learned mixture
prior; planar, iaf: flows on the posterior). The module's hooks say what they change:
`log_prior(z)` and `prior_sample(key, n)` (the prior), `transform(z0, h)` (the posterior's flow,
with its log-determinant); `importance_log_weights` reads only the hooks, so the IWAE bound and
the importance-sampled NLL use whichever prior and posterior the model has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax import objectives
from aeflax.checks import check
from aeflax.models.layers import dense
from aeflax.parts import Bottleneck


def sample(key, mean, logvar, num: int | None = None):
    """Reparameterized draw z = mean + exp(logvar / 2) * eps; `num` adds a leading sample axis."""
    shape = mean.shape if num is None else (num, *mean.shape)
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, shape, mean.dtype)


def decoded_log_likelihood(model, z, target, likelihood: str, std: float = 1.0):
    """log p(target|z_i) of draws z [k, B, D]: [k, B], decoded a few draws at a time (memory)."""
    def one(zi):
        logits = model.decode_logits(zi)
        return objectives.log_likelihood(likelihood, logits, model.output(logits), target, std)

    return jax.lax.map(one, z, batch_size=min(z.shape[0], 8))


def importance_log_weights(model, x, key, k: int, likelihood: str, std: float = 1.0, target=None):
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i ~ q(z|x); shape [k, B].

    With k = 1 this is the single-sample ELBO estimate of the same draw. `target` is the
    image scored by p(.|z) when it differs from the encoder's input (denoising: the clean one).
    """
    target = x if target is None else target
    bottleneck, h = model.bottleneck, model.encoder(x)
    mean, logvar = bottleneck.stats(h)
    z0 = sample(key, mean, logvar, num=k)  # [k, B, D]
    z, logdet = bottleneck.transform(z0, h)  # a flow: q(z) = q0(z0) / |det dz/dz0|
    log_px_z = decoded_log_likelihood(model, z, target, likelihood, std)
    log_q = objectives.log_normal(z0, mean, logvar)
    if logdet is not None:
        log_q = log_q - logdet
    return log_px_z + bottleneck.log_prior(z) - log_q


def logvar_bounds(b) -> tuple:
    """(bottleneck.logvar_min, logvar_max): the clamp of every log-variance the bottleneck computes."""
    return (b.logvar_min, b.logvar_max)


def clamp_logvar(logvar, bounds):
    """The log-variance clamped to [min, max] (a hardtanh: no gradient outside); (None, None): as it is."""
    lo, hi = bounds
    return logvar if lo is None and hi is None else jnp.clip(logvar, lo, hi)


class Gaussian(nnx.Module):
    """The code is a reparameterized sample of q(z|x); without a key (evaluation, encoding) the mean.
    `logvar_bounds`: the clamp of the log-variance (logvar_bounds(b))."""

    def __init__(self, in_features: int, code_size: int, rngs: nnx.Rngs, init: str = "glorot_uniform",
                 logvar_bounds: tuple = (None, None)):
        self.mean = dense(in_features, code_size, rngs, init)
        self.logvar = dense(in_features, code_size, rngs, init)
        self.code_size = code_size
        self.logvar_bounds = tuple(logvar_bounds)

    def stats(self, h):
        h = h.reshape(h.shape[0], -1)
        return self.mean(h), clamp_logvar(self.logvar(h), self.logvar_bounds)

    def __call__(self, h, *, key=None, train: bool = False):
        mean, logvar = self.stats(h)
        code = mean if key is None else sample(key, mean, logvar)
        out = {"code": code, "mean": mean, "logvar": logvar}
        z, logdet = self.transform(code, h)
        if logdet is not None:  # a flow: the decoder reads z_K; z_0 and the log-determinant for the KL
            out.update(code=z, z0=code, logdet=logdet)
        return out

    def transform(self, z0, h):
        """(z, log|det dz/dz0|) of the posterior's flow on draws z0 [..., B, D]; here none: (z0, None)."""
        return z0, None

    def log_prior(self, z):
        """log p(z) over the last axis: here N(0, I)."""
        zeros = jnp.zeros(z.shape[-1:], z.dtype)
        return objectives.log_normal(z, zeros, zeros)

    def prior_sample(self, key, n: int):
        """n codes from the prior N(0, I)."""
        return jax.random.normal(key, (n, self.code_size))


@dataclass
class Fields:
    code_size: int = 64
    # the VampPrior and Exemplar VAE code clamps each log-variance with a hardtanh to [-6, 2]; null: no bound
    logvar_min: Optional[float] = None
    logvar_max: Optional[float] = None


class GaussianPart(Bottleneck):
    name = "gaussian"
    Fields = Fields
    posterior = True
    gaussian_posterior = True

    def validate(self, cfg) -> None:
        b = cfg.bottleneck
        check(b.code_size >= 1, f"bottleneck.code_size={b.code_size} must be >= 1 (the size of the code)")
        check(b.logvar_min is None or b.logvar_max is None or b.logvar_min < b.logvar_max,
              f"bottleneck.logvar_min={b.logvar_min} must be < bottleneck.logvar_max={b.logvar_max}")

    def build(self, b, in_features, map_channels, rngs, init):
        return Gaussian(in_features, b.code_size, rngs, init, logvar_bounds(b)), b.code_size

    def kl(self, out):
        """Closed form; with a flow (Rezende & Mohamed 2015) KL(q_K || p) = E[log q0(z0) - log p(z0)]
        + E[log p(z0) - log p(z_K) - log|det|]: the closed form plus a one-draw estimate of the rest,
        so an identity flow gives exactly the plain VAE's KL."""
        kl = objectives.kl_standard_normal(out["mean"], out["logvar"])
        if "logdet" in out:
            zeros = jnp.zeros_like(out["mean"])
            log_p = lambda z: objectives.log_normal(z, zeros, zeros)  # noqa: E731
            kl = kl + ((log_p(out["z0"]) - log_p(out["code"])) - out["logdet"])  # identity: kl + 0
        return kl

    def prior_sample(self, key, n, b, model):
        return model.bottleneck.prior_sample(key, n)

    def importance_log_weights(self, model, x, key, k, likelihood, std=1.0, target=None):
        return importance_log_weights(model, x, key, k, likelihood, std, target)


PART = GaussianPart()
