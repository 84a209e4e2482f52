"""A binary code: sigmoid units rounded to {0, 1} in the forward pass, the sigmoid's gradient in the
backward pass (straight-through, Bengio et al. 2013): a hash of each image in code_size bits, as in
semantic hashing (Salakhutdinov & Hinton 2009), learned end to end."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax.checks import check
from aeflax.models.layers import dense
from aeflax.parts import Bottleneck
from aeflax.parts.bottleneck.vq import straight_through


class Binary(nnx.Module):
    """Dense(code_size) + sigmoid, rounded: the code is exactly 0 or 1, `probs` the sigmoid."""

    def __init__(self, in_features: int, code_size: int, rngs: nnx.Rngs, init: str = "glorot_uniform"):
        self.linear = dense(in_features, code_size, rngs, init)

    def __call__(self, h, *, key=None, train: bool = False):
        probs = jax.nn.sigmoid(self.linear(h.reshape(h.shape[0], -1)))
        return {"code": straight_through(probs, jnp.round(probs)), "probs": probs}


@dataclass
class Fields:
    code_size: int = 64


class BinaryPart(Bottleneck):
    name = "binary"
    Fields = Fields
    smooth_code = False  # rounded: piecewise constant (no contractive penalty)

    def validate(self, cfg) -> None:
        b = cfg.bottleneck
        check(b.code_size >= 1, f"bottleneck.code_size={b.code_size} must be >= 1 (the size of the code)")

    def build(self, b, in_features, map_channels, rngs, init):
        return Binary(in_features, b.code_size, rngs, init), b.code_size

    def code_activation(self, cfg):
        return "sigmoid"  # active_fraction: the bits on


PART = BinaryPart()
