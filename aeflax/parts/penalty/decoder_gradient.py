"""RAE-GP's gradient penalty (Ghosh et al. 2020): lambda ||dD(z)/dz||_F^2, the decoder's Jacobian at the
code z = E(x), which keeps the decoder smooth around the codes in place of a VAE's noise on them.
With penalty.code_l2 (beta ||z||^2 / 2) it is their RAE-GP; it is its own part, not a field of
penalty=rae, because its cost (one decoder pass per code dimension) must leave the program when its
weight is 0, and a vmapped sweep groups runs by the parts they switch on."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from aeflax.models import conv
from aeflax.parts import Penalty, traced


def decoder_jacobian_sq(model, z):
    """||dD(z_b)/dz_b||_F^2 per code [B], exact: forward mode, one pass per code dimension (the code is
    small, the image is not), each code decoded on its own."""
    def jacobian(zi):
        return jax.jacfwd(lambda c: model.decode(c[None])[0])(zi)  # [*image, *code]

    with conv.forward_mode():  # the CPU convs' custom VJPs have no forward mode
        jac = jax.vmap(jacobian)(z)
    return jnp.sum(jac.reshape(z.shape[0], -1) ** 2, axis=-1)


@dataclass
class Fields:
    decoder_gradient: float = traced(0.0)  # lambda of ||dD(z)/dz||_F^2 at the codes (RAE-GP)


class DecoderGradient(Penalty):
    name = "decoder_gradient"
    Fields = Fields
    weights = ("decoder_gradient",)

    def train_terms(self, batch, hp):
        value = jnp.mean(decoder_jacobian_sq(batch.model, batch.out["code"]))
        return [hp["decoder_gradient"] * value], {"decoder_gradient": value}


PART = DecoderGradient()
