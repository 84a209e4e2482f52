"""FactorVAE (Kim & Mnih 2018): the ELBO plus gamma times a discriminator's estimate of the total
correlation of q(z), the discriminator trained beside the VAE with its own optimizer.

The discriminator D tells codes z ~ q(z) (class 0) from codes whose every dimension was shuffled
across the batch (class 1: samples of the product of q(z)'s marginals), so
TC = KL(q(z) || prod_d q(z_d)) ~ mean over the batch of log D(z) / (1 - D(z)), the difference of its
two logits. As in disentanglement_lib, one forward per batch serves both objectives: the VAE's term
reads D with its parameters behind stop_gradient, D's cross-entropy reads the codes behind
stop_gradient, so one gradient of their sum is the VAE's for the VAE and D's for D.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from aeflax.checks import check
from aeflax.models.layers import dense
from aeflax.parts import Penalty, bottleneck_of, traced

PERMUTATION_STREAM = 2  # fold_in(batch.key, .): the shuffle, independent of the posterior's draw
LEAK = 0.2  # Kim & Mnih's LeakyReLU slope
B1, B2 = 0.5, 0.9  # Kim & Mnih's Adam moments for the discriminator


class Discriminator(nnx.Module):
    """An MLP on codes: `depth` LeakyReLU layers of `width` units, then 2 logits (q(z), permuted)."""

    def __init__(self, code_size: int, width: int, depth: int, rngs: nnx.Rngs):
        sizes = [code_size] + [width] * depth
        self.hidden = nnx.List([dense(a, b, rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
        self.out = dense(sizes[-1], 2, rngs)

    def __call__(self, z):
        h = z
        for layer in self.hidden:
            h = jax.nn.leaky_relu(layer(h), LEAK)
        return self.out(h)


def permute_dims(key, z):
    """Each column of z [B, D] shuffled across the batch by a permutation of its own (the paper's
    Algorithm 1): every dimension keeps its marginal, the dependence between dimensions is broken."""
    keys = jax.random.split(key, z.shape[1])
    return jax.vmap(jax.random.permutation, in_axes=(0, 1), out_axes=1)(keys, z)


def frozen(module):
    """`module` with its parameters behind stop_gradient: what it computes moves the gradient of its
    input, never its own parameters."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def discriminator_loss(real, fake):
    """Cross-entropy of class 0 on the codes' logits and class 1 on the permuted codes', each half."""
    return -0.5 * (jnp.mean(jax.nn.log_softmax(real)[:, 0]) + jnp.mean(jax.nn.log_softmax(fake)[:, 1]))


def discriminator_accuracy(real, fake):
    """The share of codes and permuted codes the discriminator tells apart (0.5: chance)."""
    return 0.5 * (jnp.mean(real[:, 0] > real[:, 1]) + jnp.mean(fake[:, 1] > fake[:, 0]))


@dataclass
class Fields:
    factor_gamma: float = traced(0.0)  # gamma: weight of the discriminator's TC estimate added to the ELBO
    factor_width: int = 256  # units per discriminator layer (Kim & Mnih: 1000)
    factor_depth: int = 3  # hidden discriminator layers (Kim & Mnih: 6)
    factor_lr: float = 1e-4  # the discriminator's Adam learning rate (Kim & Mnih's), b1 0.5, b2 0.9


class FactorTC(Penalty):
    name = "factor_tc"
    Fields = Fields
    weights = ("factor_gamma",)
    owns_module = True

    def validate(self, cfg) -> None:
        super().validate(cfg)
        p = cfg.penalty
        check(p.factor_width >= 1 and p.factor_depth >= 0,
              f"penalty.factor_width={p.factor_width} must be >= 1 and factor_depth={p.factor_depth} >= 0")
        check(p.factor_lr > 0, f"penalty.factor_lr={p.factor_lr} must be > 0")
        if self.active(cfg):
            b = bottleneck_of(cfg)
            check(b.posterior, f"penalty.factor_gamma needs a VAE's sampled code (a bottleneck with q(z|x), "
                               f"e.g. bottleneck=gaussian), not bottleneck={b.name}")
            check(cfg.train.batch_size >= 2, "penalty.factor_gamma needs train.batch_size >= 2 (it shuffles "
                                             "codes across the batch)")

    def module(self, cfg, rngs):
        p = cfg.penalty
        return Discriminator(cfg.bottleneck.code_size, p.factor_width, p.factor_depth, rngs)

    def optimizer(self, cfg):
        return optax.adam(cfg.penalty.factor_lr, b1=B1, b2=B2)

    def train_terms(self, batch, hp):
        z = batch.out["code"].reshape(batch.out["code"].shape[0], -1)
        disc = batch.model.owned[self.name]
        logits = frozen(disc)(z)
        tc = jnp.mean(logits[:, 0] - logits[:, 1])
        real = disc(jax.lax.stop_gradient(z))
        shuffled = permute_dims(jax.random.fold_in(batch.key, PERMUTATION_STREAM), z)
        fake = disc(jax.lax.stop_gradient(shuffled))
        d_loss = discriminator_loss(real, fake)
        # D's loss enters the gradient, not the value: train/loss stays the VAE's objective, and with
        # the codes stopped its gradient reaches D's parameters alone
        return ([hp["factor_gamma"] * tc, d_loss - jax.lax.stop_gradient(d_loss)],
                {"factor_tc": tc, "factor_disc_loss": d_loss,
                 "factor_disc_accuracy": discriminator_accuracy(real, fake)})


PART = FactorTC()
