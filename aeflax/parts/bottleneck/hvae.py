"""The 2-level hierarchical VAE of Tomczak & Welling (2018, their HVAE): two stochastic layers,
q(z2|x) q(z1|x,z2) and p(z2) p(z1|z2) p(x|z1,z2); the decoder reads the code [z1, z2].

The top layer is a one-layer Gaussian bottleneck of its own, built and attached by the part that
`bottleneck.top_prior` names: bottleneck=gaussian's module (q(z2|x) on the encoder's features,
p(z2) = N(0, I)) or bottleneck=vamp's (p(z2) the VampPrior, its pseudo-inputs encoded by q(z2|.)).
Its hooks `stats`, `log_prior` and `prior_sample` are q(z2|x) and p(z2) here; a new prior on the
Gaussian bottleneck is a new top prior with one line in TOP_PRIORS. q(z1|x,z2) and p(z1|z2) are
conditional Gaussians with hidden layers of their own.

There is no closed-form KL through p(z1|z2), nor to a mixture: the KL term is the paper's single-
sample log q(z1, z2|x) - log p(z1, z2) at the draw the decoder reads, reported per layer; the
importance weights are log p(x|z1, z2) minus it at k draws, so k = 1 is the ELBO of the same draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax import objectives
from aeflax.checks import check, one_of
from aeflax.models.layers import ACTIVATIONS, Hidden, dense
from aeflax.parts.bottleneck import gaussian, vamp

TOP_PRIORS = {"standard": gaussian.PART, "vamp": vamp.PART}  # p(z2) -> the part that builds the top layer


class ConditionalGaussian(nnx.Module):
    """N(mean, diag(exp(logvar))) given inputs c_1..c_n: each through a hidden layer of its own, the
    results concatenated through one joint hidden layer, then linear heads. The paper's q(z1|x,z2)
    is n = 2 (x and z2), its p(z1|z2) n = 1 (two hidden layers)."""

    def __init__(self, in_sizes, hidden: int, out_size: int, act: str, rngs: nnx.Rngs, init: str,
                 logvar_bounds: tuple = (None, None)):
        self.logvar_bounds = tuple(logvar_bounds)
        self.branches = nnx.List([Hidden(n, hidden, act, rngs, init) for n in in_sizes])
        self.joint = Hidden(len(in_sizes) * hidden, hidden, act, rngs, init)
        self.mean = dense(hidden, out_size, rngs, init)
        self.logvar = dense(hidden, out_size, rngs, init)

    def __call__(self, *inputs):
        """(mean, logvar) [..., B, out]; inputs [B, F] and draws [k, B, D] broadcast against each other."""
        hs = [branch(c) for branch, c in zip(self.branches, inputs, strict=True)]
        shape = jnp.broadcast_shapes(*(h.shape for h in hs))
        h = self.joint(jnp.concatenate([jnp.broadcast_to(h, shape) for h in hs], axis=-1))
        return self.mean(h), gaussian.clamp_logvar(self.logvar(h), self.logvar_bounds)


class Hierarchical(nnx.Module):
    """`top`: q(z2|x) and p(z2) (a Gaussian bottleneck module); q(z1|x,z2) reads the encoder's features
    of x (the paper's reads x through a layer of its own) and z2."""

    def __init__(self, top, in_features: int, code_size: int, hidden: int, act: str, rngs: nnx.Rngs,
                 init: str = "glorot_uniform", logvar_bounds: tuple = (None, None)):
        self.top = top
        bounds = logvar_bounds
        self.q_z1 = ConditionalGaussian((in_features, code_size), hidden, code_size, act, rngs, init, bounds)
        self.p_z1 = ConditionalGaussian((code_size,), hidden, code_size, act, rngs, init, bounds)

    def layers(self, h, key=None, num: int | None = None) -> dict:
        """z2 ~ q(z2|x), then z1 ~ q(z1|x,z2) (without a key: the means; `num` draws: [num, B, D]),
        their code [z1, z2], the posteriors' parameters, and log q - log p of each layer at the draw."""
        h = h.reshape(h.shape[0], -1)
        mean2, logvar2 = self.top.stats(h)
        k2, k1 = (None, None) if key is None else jax.random.split(key)
        z2 = mean2 if key is None else gaussian.sample(k2, mean2, logvar2, num)
        mean1, logvar1 = self.q_z1(h, z2)
        z1 = mean1 if key is None else gaussian.sample(k1, mean1, logvar1)
        kl_z1 = objectives.log_normal(z1, mean1, logvar1) - objectives.log_normal(z1, *self.p_z1(z2))
        kl_z2 = objectives.log_normal(z2, mean2, logvar2) - self.top.log_prior(z2)
        return {"code": jnp.concatenate([z1, z2], axis=-1), "kl_z1": kl_z1, "kl_z2": kl_z2,
                "mean1": mean1, "logvar1": logvar1, "mean2": mean2, "logvar2": logvar2}

    def __call__(self, h, *, key=None, train: bool = False):
        d = self.layers(h, key)
        return {"code": d["code"], "kl_z1": d["kl_z1"], "kl_z2": d["kl_z2"],
                "mean": jnp.concatenate([d["mean1"], d["mean2"]], axis=-1),
                "logvar": jnp.concatenate([d["logvar1"], d["logvar2"]], axis=-1)}

    def prior_sample(self, key, n: int):
        """n codes [z1, z2] drawn ancestrally: z2 ~ p(z2), then z1 ~ p(z1|z2)."""
        k2, k1 = jax.random.split(key)
        z2 = self.top.prior_sample(k2, n)
        z1 = gaussian.sample(k1, *self.p_z1(z2))
        return jnp.concatenate([z1, z2], axis=-1)


@dataclass
class Fields(vamp.Fields):  # code_size: each layer's size (the decoder reads 2 x code_size); pseudo_inputs
    top_prior: str = "standard"  # p(z2): standard (N(0, I)) | vamp (the VampPrior, bottleneck.pseudo_inputs)
    hierarchy_hidden: int = 300  # units of each hidden layer of q(z1|x,z2) and p(z1|z2) (the paper's 300)
    hierarchy_activation: str = "gated"  # their activation (the paper's gated dense layers) | relu | ...


class HVAEPart(gaussian.GaussianPart):
    name = "hvae"
    Fields = Fields
    gaussian_posterior = False  # q(z1, z2|x) is not one diagonal Gaussian (z1's depends on the z2 drawn)

    def validate(self, cfg) -> None:
        super().validate(cfg)
        b = cfg.bottleneck
        one_of(b.top_prior, tuple(TOP_PRIORS), "bottleneck.top_prior")
        check(b.hierarchy_hidden >= 1, f"bottleneck.hierarchy_hidden={b.hierarchy_hidden} must be >= 1")
        one_of(b.hierarchy_activation, (*ACTIVATIONS, "gated"), "bottleneck.hierarchy_activation")

    def build(self, b, in_features, map_channels, rngs, init):
        top, size = TOP_PRIORS[b.top_prior].build(b, in_features, map_channels, rngs, init)
        module = Hierarchical(top, in_features, size, b.hierarchy_hidden, b.hierarchy_activation, rngs, init,
                              gaussian.logvar_bounds(b))
        return module, 2 * size

    def attach(self, b, module, encoder, image_shape, rngs):
        TOP_PRIORS[b.top_prior].attach(b, module.top, encoder, image_shape, rngs)

    def kl(self, out):
        """log q(z1, z2|x) - log p(z1, z2) at the draw (single sample, as the paper)."""
        return out["kl_z1"] + out["kl_z2"]

    def eval_terms(self, batch):
        return {"kl_z1": batch.out["kl_z1"], "kl_z2": batch.out["kl_z2"]}

    def importance_log_weights(self, model, x, key, k, likelihood, std=1.0, target=None):
        """log p(x|z1, z2) + log p(z1|z2) + log p(z2) - log q(z1|x,z2) - log q(z2|x) at k draws: [k, B]."""
        d = model.bottleneck.layers(model.encoder(x), key, num=k)
        log_px = gaussian.decoded_log_likelihood(model, d["code"], x if target is None else target,
                                                 likelihood, std)
        return log_px - d["kl_z1"] - d["kl_z2"]


PART = HVAEPart()
