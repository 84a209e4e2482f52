"""The regularised autoencoder (RAE, Ghosh et al. 2020): a deterministic AE whose code is kept near 0
by beta ||z||^2 / 2 and whose decoder is kept smooth by lambda ||theta_D||^2 (RAE-L2), so that
an ex-post density on the codes (eval.sampler=gmm) makes it a generator."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax.checks import check
from aeflax.parts import Penalty, bottleneck_of, traced


def decoder_l2(model):
    """sum w^2 over the decoder's kernels (not biases): RAE-L2's weight penalty, the decoder only."""
    leaves = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model.decoder, nnx.Param))
              if "kernel" in jax.tree_util.keystr(path)]
    return sum(jnp.sum(w**2) for w in leaves)


@dataclass
class Fields:
    code_l2: float = traced(0.0)  # beta: weight of ||z||^2 / 2 per image
    decoder_l2: float = traced(0.0)  # lambda: weight of the decoder's sum w^2


class RAE(Penalty):
    name = "rae"
    Fields = Fields
    weights = ("code_l2", "decoder_l2")

    def validate(self, cfg) -> None:
        super().validate(cfg)
        b = bottleneck_of(cfg)
        check(not (cfg.penalty.code_l2 > 0) or not b.posterior,
              f"penalty.code_l2 regularises a deterministic code; bottleneck={b.name} has a prior already")

    def train_terms(self, batch, hp):
        z = batch.out["code"]
        code = 0.5 * jnp.mean(jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=-1))
        return [hp["code_l2"] * code, hp["decoder_l2"] * decoder_l2(batch.model)], {"code_l2": code}


PART = RAE()
