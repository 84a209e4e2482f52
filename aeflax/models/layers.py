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
    "he_normal": nnx.initializers.he_normal(),  # truncated normal, variance 2 / fan_in
    # PyTorch's default for Linear and Conv2d (kaiming_uniform(a=sqrt(5))): U(+-1/sqrt(fan_in))
    "pytorch_uniform": nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
    # the VampPrior and Exemplar VAE code's he_init: N(0, 2 / fan_in), not truncated
    "he_normal_torch": nnx.initializers.variance_scaling(2.0, "fan_in", "normal"),
    # an nn.Linear as PyTorch makes it: pytorch_uniform kernel and PyTorch's bias (pythae's models)
    "pytorch": nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
}
TORCH_BIAS = ("he_normal_torch", "pytorch")  # inits whose biases keep PyTorch's default (torch_bias)


def activation(name: str):
    return ACTIVATIONS[name]


def torch_bias(n_in: int):
    """PyTorch's default Linear bias, U(-1/sqrt(n_in), 1/sqrt(n_in)): the authors' he_init leaves it."""
    bound = 1 / n_in**0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def dense(n_in: int, n_out: int, rngs: nnx.Rngs, init: str = "glorot_uniform") -> nnx.Linear:
    """A Linear with Keras' defaults (Glorot-uniform kernel, zero bias) unless asked otherwise."""
    bias_init = torch_bias(n_in) if init in TORCH_BIAS else nnx.initializers.zeros_init()
    return nnx.Linear(n_in, n_out, kernel_init=INITIALIZERS[init], bias_init=bias_init, rngs=rngs)


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
