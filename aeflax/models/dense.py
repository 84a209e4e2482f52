"""Dense (MLP) encoder and decoder."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from aeflax.models.layers import Hidden, dense


class DenseEncoder(nnx.Module):
    """Flatten, then hidden Dense layers; the bottleneck makes the code from its output."""

    def __init__(self, image_shape, hidden, act: str, rngs: nnx.Rngs, init: str = "glorot_uniform"):
        sizes = [math.prod(image_shape), *hidden]
        self.layers = nnx.List([Hidden(a, b, act, rngs, init)
                                for a, b in zip(sizes[:-1], sizes[1:], strict=False)])
        self.out_features = sizes[-1]

    def __call__(self, x):
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = layer(h)
        return h


class DenseDecoder(nnx.Module):
    """Hidden Dense layers, then a Dense to every pixel; returns logits in image shape."""

    def __init__(self, code_size: int, image_shape, hidden, act: str, rngs: nnx.Rngs,
                 init: str = "glorot_uniform"):
        sizes = [code_size, *hidden]
        self.layers = nnx.List([*(Hidden(a, b, act, rngs, init)
                                  for a, b in zip(sizes[:-1], sizes[1:], strict=False)),
                                dense(sizes[-1], math.prod(image_shape), rngs, init)])
        self.image_shape = tuple(image_shape)

    def __call__(self, z):
        h = z.reshape(z.shape[0], -1)
        for layer in self.layers[:-1]:
            h = layer(h)
        return jnp.reshape(self.layers[-1](h), (z.shape[0], *self.image_shape))
