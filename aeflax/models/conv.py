"""Strided-conv encoder and transposed-conv decoder (the tutorial's conv autoencoder)."""

from __future__ import annotations

import math

from flax import nnx

from aeflax.models.layers import INITIALIZERS, activation, dense


def _conv(n_in, n_out, kernel, stride, rngs, init):
    return nnx.Conv(n_in, n_out, (kernel, kernel), strides=stride, padding="SAME",
                    kernel_init=INITIALIZERS[init], rngs=rngs)


def _conv_transpose(n_in, n_out, kernel, stride, rngs, init):
    return nnx.ConvTranspose(n_in, n_out, (kernel, kernel), strides=stride, padding="SAME",
                             kernel_init=INITIALIZERS[init], rngs=rngs)


def feature_shape(image_shape, channels, stride) -> tuple[int, int, int]:
    """Shape of the encoder's feature map ('same' padding: ceil(size / stride) per layer)."""
    h, w, _ = image_shape
    for _ in channels:
        h, w = math.ceil(h / stride), math.ceil(w / stride)
    return h, w, channels[-1]


class ConvEncoder(nnx.Module):
    def __init__(self, image_shape, channels, kernel, stride, act, rngs, init="glorot_uniform"):
        ins = [image_shape[-1], *channels[:-1]]
        self.layers = nnx.List([_conv(a, b, kernel, stride, rngs, init)
                                for a, b in zip(ins, channels, strict=False)])
        self.act = activation(act)
        self.out_shape = feature_shape(image_shape, channels, stride)
        self.out_features = math.prod(self.out_shape)

    def __call__(self, x):
        for layer in self.layers:
            x = self.act(layer(x))
        return x


class ConvDecoder(nnx.Module):
    """Optional Dense from a vector code to the feature map, transposed convs, a last Conv."""

    def __init__(self, code_size, image_shape, channels, kernel, stride, act, rngs,
                 init="glorot_uniform"):
        self.start_shape = feature_shape(image_shape, channels, stride)
        self.project = dense(code_size, math.prod(self.start_shape), rngs, init) if code_size else None
        rev = list(reversed(channels))
        self.layers = nnx.List([_conv_transpose(a, b, kernel, stride, rngs, init)
                                for a, b in zip([channels[-1], *rev[:-1]], rev, strict=False)])
        self.out = _conv(rev[-1], image_shape[-1], kernel, 1, rngs, init)
        self.act = activation(act)
        self.image_shape = tuple(image_shape)

    def __call__(self, z):
        if self.project is not None:
            z = self.act(self.project(z)).reshape(z.shape[0], *self.start_shape)
        for layer in self.layers:
            z = self.act(layer(z))
        logits = self.out(z)
        h, w, _ = self.image_shape  # crop when strides overshoot an odd size
        return logits[:, :h, :w, :] if logits.shape[1:3] != (h, w) else logits

