"""The contractive autoencoder (Rifai et al. 2011): lambda ||J_f(x)||_F^2, f the map from input to code."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from aeflax.checks import check, one_of
from aeflax.models.dense import DenseEncoder
from aeflax.parts import Penalty, bottleneck_of, traced
from aeflax.parts.bottleneck.deterministic import Deterministic

METHODS = ("auto", "autodiff", "closed_form")


def has_closed_form_jacobian(model) -> bool:
    """True for a one-layer dense encoder: x -> act(W x + b), the case of Rifai et al.'s formula."""
    return (isinstance(model.encoder, DenseEncoder) and len(model.encoder.layers) == 0
            and isinstance(model.bottleneck, Deterministic))


def contractive_closed_form(model, x):
    """||J||_F^2 = sum_j act'(a_j)^2 sum_i W_ij^2 for h = act(W x + b), batch mean.

    For a sigmoid code act'(a) = h (1 - h), Rifai et al.'s (2011) eq. for the CAE; the
    slope of any element-wise activation is taken by forward-mode autodiff.
    """
    linear = model.bottleneck.linear
    a = linear(x.reshape(x.shape[0], -1))
    _, slope = jax.jvp(model.bottleneck.act, (a,), (jnp.ones_like(a),))
    return jnp.mean(jnp.sum(slope**2 * jnp.sum(linear.kernel[...] ** 2, axis=0), axis=-1))


def contractive_autodiff(model, x):
    """Mean over the batch of ||J_f(x)||_F^2 (exact, reverse mode).

    The code is the pre-top-k activation (deterministic, identity) or the mean (gaussian).
    """
    def code_of(xi):
        out = model.encode(xi[None])
        return out.get("activation", out.get("mean"))[0].reshape(-1)

    jac = jax.vmap(jax.jacrev(code_of))(x)  # [B, code, *image]
    return jnp.mean(jnp.sum(jac.reshape(jac.shape[0], -1) ** 2, axis=-1))


def contractive(model, x, method: str = "auto"):
    """The contractive penalty by `method`: auto (closed form when it exists) | autodiff | closed_form."""
    if method == "closed_form" or (method == "auto" and has_closed_form_jacobian(model)):
        return contractive_closed_form(model, x)
    return contractive_autodiff(model, x)


@dataclass
class Fields:
    contractive: float = traced(0.0)  # lambda of ||J_f(x)||_F^2
    contractive_method: str = "auto"  # auto (closed form when possible) | autodiff | closed_form


class Contractive(Penalty):
    name = "contractive"
    Fields = Fields
    weights = ("contractive",)

    def validate(self, cfg) -> None:
        super().validate(cfg)
        p, m, b = cfg.penalty, cfg.model, bottleneck_of(cfg)
        one_of(p.contractive_method, METHODS, "penalty.contractive_method")
        if not self.active(cfg):
            return
        check(b.smooth_code,
              f"penalty.contractive is undefined for bottleneck={b.name} (its code is piecewise constant)")
        check(p.contractive_method != "closed_form" or
              (m.architecture == "dense" and not m.hidden and b.name == "deterministic"),
              "penalty.contractive_method=closed_form needs a one-layer encoder (model=dense, "
              "model.hidden=[], bottleneck=deterministic); use contractive_method=autodiff")

    def train_terms(self, batch, hp):
        value = contractive(batch.model, batch.x_in, batch.cfg.penalty.contractive_method)
        return [hp["contractive"] * value], {"contractive": value}


PART = Contractive()
