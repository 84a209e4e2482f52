"""L1 and L2 penalties on the weights (kernels, not biases or codebooks), Keras' kernel_regularizer."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax.models import OWNED
from aeflax.parts import Penalty, traced


def kernel_norms(model):
    """(sum |w|, sum w^2) over every kernel (weights, not biases or codebooks) of the autoencoder; the
    modules parts own (model.owned: FactorVAE's discriminator) have their own objective and optimizer."""
    leaves = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
              if "kernel" in jax.tree_util.keystr(path) and path[0].key != OWNED]
    return sum(jnp.sum(jnp.abs(w)) for w in leaves), sum(jnp.sum(w**2) for w in leaves)


@dataclass
class Fields:
    l1_weight: float = traced(0.0)
    l2_weight: float = traced(0.0)


class WeightNorms(Penalty):
    name = "weight_norms"
    Fields = Fields
    weights = ("l1_weight", "l2_weight")

    def train_terms(self, batch, hp):
        l1, l2 = kernel_norms(batch.model)
        return [hp["l1_weight"] * l1, hp["l2_weight"] * l2], {}


PART = WeightNorms()
