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
}


def activation(name: str):
    return ACTIVATIONS[name]


def dense(n_in: int, n_out: int, rngs: nnx.Rngs, init: str = "glorot_uniform") -> nnx.Linear:
    """A Linear with Keras' defaults (Glorot-uniform kernel, zero bias) unless asked otherwise."""
    return nnx.Linear(n_in, n_out, kernel_init=INITIALIZERS[init], rngs=rngs)
