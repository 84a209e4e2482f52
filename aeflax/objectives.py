"""Losses, likelihood bounds and penalties, in nats where they are likelihoods.

Per-example functions return arrays of shape [B]; `loss_and_metrics` combines them into
the training objective. Scalar weights (beta, penalty weights) come from a dict of
hyperparameters `hp` so they can be traced and vmapped over in sweeps.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax.models.bottlenecks import sample

LOG_2PI = math.log(2 * math.pi)


def _flat(x):
    return x.reshape(x.shape[0], -1)


# --- reconstruction --------------------------------------------------------------------

def mse(recon, x):
    """Mean squared error per image, averaged over pixels (Keras' `mse`)."""
    return jnp.mean(_flat((recon - x) ** 2), axis=-1)


def bce_from_logits(logits, x):
    """Binary cross-entropy per image in nats, averaged over pixels; x may be in [0, 1]."""
    return jnp.mean(_flat(optax_sigmoid_bce(logits, x)), axis=-1)


def optax_sigmoid_bce(logits, x):
    return jnp.maximum(logits, 0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def psnr(recon, x):
    """PSNR in dB for images in [0, 1]: 10 log10(1 / MSE), per image."""
    return 10.0 * jnp.log10(1.0 / jnp.maximum(mse(recon, x), 1e-12))


# --- likelihoods and the variational bounds --------------------------------------------

def bernoulli_log_likelihood(logits, x):
    """log p(x | z) summed over pixels, nats per image."""
    return -jnp.sum(_flat(optax_sigmoid_bce(logits, x)), axis=-1)


def gaussian_log_likelihood(mean, x, std: float = 1.0):
    """log N(x; mean, std^2 I) summed over pixels, nats per image."""
    z = _flat((x - mean) / std)
    return -0.5 * jnp.sum(z**2 + LOG_2PI + 2 * math.log(std), axis=-1)


def log_likelihood(likelihood: str, logits, recon, x):
    if likelihood == "bernoulli":
        return bernoulli_log_likelihood(logits, x)
    return gaussian_log_likelihood(recon, x)


def kl_standard_normal(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, closed form, nats."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)


def log_normal(z, mean, logvar):
    """log N(z; mean, diag(exp(logvar))) summed over the last axis."""
    return -0.5 * jnp.sum(LOG_2PI + logvar + (z - mean) ** 2 / jnp.exp(logvar), axis=-1)


def importance_log_weights(model, x, key, k: int, likelihood: str):
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i ~ q(z|x); shape [k, B]."""
    mean, logvar = model.bottleneck.stats(model.encoder(x))
    z = sample(key, mean, logvar, num=k)  # [k, B, D]

    def one(zi):
        logits = model.decode_logits(zi)
        recon = jax.nn.sigmoid(logits) if model.output_activation == "sigmoid" else logits
        return log_likelihood(likelihood, logits, recon, x)

    log_px_z = jax.lax.map(one, z)
    zeros = jnp.zeros_like(mean)
    return log_px_z + log_normal(z, zeros, zeros) - log_normal(z, mean, logvar)


def iwae_bound(model, x, key, k: int, likelihood: str):
    """The k-sample importance-weighted bound (Burda et al.): logsumexp_k log w - log k."""
    log_w = importance_log_weights(model, x, key, k, likelihood)
    return jax.nn.logsumexp(log_w, axis=0) - math.log(k)


# --- penalties -------------------------------------------------------------------------

def kl_sparsity(activation, target):
    """Sum over units of KL(rho || rho_hat), rho_hat the unit's mean activation in the batch."""
    rho_hat = jnp.clip(jnp.mean(activation, axis=0), 1e-6, 1 - 1e-6)
    return jnp.sum(target * jnp.log(target / rho_hat)
                   + (1 - target) * jnp.log((1 - target) / (1 - rho_hat)))


def contractive(model, x):
    """Mean over the batch of ||J_f(x)||_F^2, f the map from input to code (exact, autodiff)."""
    def code_of(xi):
        return model.encode(xi[None])["activation"][0].reshape(-1)

    jac = jax.vmap(jax.jacrev(code_of))(x)  # [B, code, *image]
    return jnp.mean(jnp.sum(_flat(jac) ** 2, axis=-1))


def kernel_norms(model):
    """(sum |w|, sum w^2) over every kernel (weights, not biases) of the model."""
    leaves = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
              if "kernel" in jax.tree_util.keystr(path)]
    return sum(jnp.sum(jnp.abs(w)) for w in leaves), sum(jnp.sum(w**2) for w in leaves)


# --- the objective ---------------------------------------------------------------------

def loss_and_metrics(model, x_in, x_target, key, hp, cfg, train: bool = True):
    """The training objective on one batch and the metrics logged with it.

    `x_in` is what the encoder sees (maybe corrupted), `x_target` what the decoder must
    reproduce (clean). `cfg` is the run config (static: which terms exist); `hp` holds the
    traced weights. Returns (scalar loss, dict of scalar metrics).
    """
    lo, pen = cfg.loss, cfg.penalty
    k_model, k_iwae = jax.random.split(key)
    variational = lo.name in ("elbo", "iwae")
    out = model(x_in, key=k_model if variational else None, train=train)
    logits, recon = out["logits"], out["recon"]
    metrics = {"mse": jnp.mean(mse(recon, x_target)), "bce": jnp.mean(bce_from_logits(logits, x_target))}

    if lo.name == "mse":
        loss = metrics["mse"]
    elif lo.name == "bce":
        loss = metrics["bce"]
    else:
        log_px = log_likelihood(lo.likelihood, logits, recon, x_target)
        kl = kl_standard_normal(out["mean"], out["logvar"])
        elbo = log_px - kl
        metrics.update(elbo=jnp.mean(elbo), kl=jnp.mean(kl), recon_nll=-jnp.mean(log_px))
        if lo.name == "iwae":
            bound = iwae_bound(model, x_in, k_iwae, lo.k, lo.likelihood)
            metrics["iwae"] = jnp.mean(bound)
            loss = -metrics["iwae"]
        else:
            loss = -jnp.mean(log_px - hp["kl_weight"] * kl)

    if "vq_loss" in out:
        loss = loss + out["vq_loss"]
        metrics.update(vq_loss=out["vq_loss"], perplexity=out["perplexity"])
    if "activation" in out and cfg.bottleneck.kind == "deterministic":
        a = out["activation"]
        metrics["code/mean_activation"] = jnp.mean(a)
        metrics["code/active_fraction"] = jnp.mean(jnp.abs(out["code"]) > 1e-2)
        if pen.l1_activity > 0:
            loss = loss + hp["l1_activity"] * jnp.mean(jnp.sum(jnp.abs(a), axis=-1))
        if pen.kl_sparsity > 0:
            loss = loss + hp["kl_sparsity"] * kl_sparsity(a, hp["sparsity_target"])
    if pen.contractive > 0:
        jac = contractive(model, x_in)
        metrics["contractive"] = jac
        loss = loss + hp["contractive"] * jac
    if pen.l1_weight > 0 or pen.l2_weight > 0:
        l1, l2 = kernel_norms(model)
        loss = loss + hp["l1_weight"] * l1 + hp["l2_weight"] * l2
    metrics["loss"] = loss
    return loss, metrics


def eval_terms(model, x_in, x_target, key, cfg):
    """Per-image evaluation terms ([B] arrays) for the held-out split."""
    variational = cfg.loss.name in ("elbo", "iwae")
    out = model(x_in, key=key if variational else None, train=False)
    terms = {"mse": mse(out["recon"], x_target), "bce": bce_from_logits(out["logits"], x_target),
             "psnr": psnr(out["recon"], x_target)}
    if variational:
        log_px = log_likelihood(cfg.loss.likelihood, out["logits"], out["recon"], x_target)
        kl = kl_standard_normal(out["mean"], out["logvar"])
        terms.update(elbo=log_px - kl, kl=kl, recon_nll=-log_px)
        terms["loss"] = -terms["elbo"]
    else:
        terms["loss"] = terms[cfg.loss.name]
    return terms
