"""The VAE's bottleneck: q(z|x) = N(mean, diag(exp(logvar))), prior N(0, I) (Kingma & Welling 2014)."""

from __future__ import annotations

from dataclasses import dataclass

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


def importance_log_weights(model, x, key, k: int, likelihood: str, std: float = 1.0, target=None):
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i ~ q(z|x); shape [k, B].

    With k = 1 this is the single-sample ELBO estimate of the same draw. `target` is the
    image scored by p(.|z) when it differs from the encoder's input (denoising: the clean one).
    """
    target = x if target is None else target
    mean, logvar = model.bottleneck.stats(model.encoder(x))
    z = sample(key, mean, logvar, num=k)  # [k, B, D]

    def one(zi):
        logits = model.decode_logits(zi)
        return objectives.log_likelihood(likelihood, logits, model.output(logits), target, std)

    log_px_z = jax.lax.map(one, z, batch_size=min(k, 8))
    zeros = jnp.zeros_like(mean)
    return log_px_z + objectives.log_normal(z, zeros, zeros) - objectives.log_normal(z, mean, logvar)


class Gaussian(nnx.Module):
    """The code is a reparameterized sample of q(z|x); without a key (evaluation, encoding) the mean."""

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

    def prior_sample(self, key, n: int):
        """n codes from the prior N(0, I)."""
        return jax.random.normal(key, (n, self.code_size))


@dataclass
class Fields:
    code_size: int = 64


class GaussianPart(Bottleneck):
    name = "gaussian"
    Fields = Fields
    posterior = True
    gaussian_posterior = True

    def validate(self, cfg) -> None:
        b = cfg.bottleneck
        check(b.code_size >= 1, f"bottleneck.code_size={b.code_size} must be >= 1 (the size of the code)")

    def build(self, b, in_features, map_channels, rngs, init):
        return Gaussian(in_features, b.code_size, rngs, init), b.code_size

    def kl(self, out):
        return objectives.kl_standard_normal(out["mean"], out["logvar"])

    def prior_sample(self, key, n, b):
        return jax.random.normal(key, (n, b.code_size))

    def importance_log_weights(self, model, x, key, k, likelihood, std=1.0, target=None):
        return importance_log_weights(model, x, key, k, likelihood, std, target)


PART = GaussianPart()
