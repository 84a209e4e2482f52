"""Small shared pieces: activations by name and Keras-like initializers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "leaky_relu": jax.nn.leaky_relu,
    "softplus": jax.nn.softplus,
    "linear": lambda x: x,
}

INITIALIZERS = {
    "glorot_uniform": nnx.initializers.glorot_uniform(),
    "lecun_normal": nnx.initializers.lecun_normal(),
    "he_normal": nnx.initializers.he_normal(),
    # PyTorch's default for Linear and Conv2d (kaiming_uniform(a=sqrt(5))): U(+-1/sqrt(fan_in))
    "pytorch_uniform": nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
}


def activation(name: str):
    return ACTIVATIONS[name]


def dense(n_in: int, n_out: int, rngs: nnx.Rngs, init: str = "glorot_uniform") -> nnx.Linear:
    """A Linear with Keras' defaults (Glorot-uniform kernel, zero bias) unless asked otherwise."""
    return nnx.Linear(n_in, n_out, kernel_init=INITIALIZERS[init], rngs=rngs)


class Hidden(nnx.Module):
    """One hidden Dense layer with its activation; `gated` is the gated dense layer
    h = (W x + b) * sigmoid(V x + c) of Dauphin et al., used by VampPrior and Exemplar VAE."""

    def __init__(self, n_in: int, n_out: int, act: str, rngs: nnx.Rngs, init: str = "glorot_uniform"):
        self.linear = dense(n_in, n_out, rngs, init)
        self.gate = dense(n_in, n_out, rngs, init) if act == "gated" else None
        self.act = None if act == "gated" else activation(act)

    def __call__(self, x):
        if self.gate is not None:
            return self.linear(x) * jax.nn.sigmoid(self.gate(x))
        return self.act(self.linear(x))
