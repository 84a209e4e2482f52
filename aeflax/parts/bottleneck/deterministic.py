"""The plain code: Dense(code_size) + activation, optionally k-sparse (Makhzani & Frey 2013)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax.checks import check, one_of
from aeflax.models.layers import ACTIVATIONS, activation, dense
from aeflax.parts import Bottleneck


def top_k_mask(a: jax.Array, k: int) -> jax.Array:
    """Keep exactly the k largest units of each row, zero the rest.

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


@dataclass
class Fields:
    code_size: int = 64
    activation: str = "relu"  # the code's activation
    top_k: int = 0  # k-sparse code: keep the k largest units; 0 = off


class DeterministicPart(Bottleneck):
    name = "deterministic"
    Fields = Fields
    activation_code = True

    def validate(self, cfg) -> None:
        b = cfg.bottleneck
        check(b.code_size >= 1, f"bottleneck.code_size={b.code_size} must be >= 1 (the size of the code)")
        one_of(b.activation, ACTIVATIONS, "bottleneck.activation")
        check(0 <= b.top_k <= b.code_size,
              f"bottleneck.top_k={b.top_k} must be in [0, code_size={b.code_size}]")
        check(b.top_k == 0 or self.active(cfg),
              f"bottleneck.top_k={b.top_k} (k-sparse) needs bottleneck=deterministic, not {b.kind}")

    def build(self, b, in_features, map_channels, rngs, init):
        return Deterministic(in_features, b.code_size, b.activation, b.top_k, rngs, init), b.code_size

    def code_activation(self, cfg):
        return cfg.bottleneck.activation


PART = DeterministicPart()
