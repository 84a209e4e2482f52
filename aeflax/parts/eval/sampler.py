"""Ex-post samplers (Ghosh et al. 2020): what makes an autoencoder without a prior a generator. A
density fit to codes, decoded: `gaussian` (a diagonal Gaussian, the default), `gmm` (a
scikit-learn Gaussian mixture with full covariances) or `two_stage` (Dai & Wipf 2019: a second,
small VAE trained on the codes, with a learned decoder variance; its prior's samples decoded). The
figures' samples, `aeflax.load_run(...).sample(n, like=images)` and eval.sample_quality draw from it;
bottlenecks with a prior use the prior."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from threadpoolctl import threadpool_limits

from aeflax.checks import check, one_of
from aeflax.parts import Evaluation

SAMPLERS = ("gaussian", "gmm", "two_stage")
DESCRIPTION = {"gaussian": "a Gaussian", "gmm": "a Gaussian mixture", "two_stage": "a second-stage VAE"}


def gmm_sample(codes, key, n: int, components: int):
    """n draws from a `components`-Gaussian mixture (full covariances) fit to codes [N, ...]."""
    from sklearn.mixture import GaussianMixture

    flat = np.asarray(codes, np.float64).reshape(len(codes), -1)
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    with threadpool_limits(1):  # beside JAX's threads (see evaluation.py)
        gmm = GaussianMixture(min(components, len(flat)), covariance_type="full", random_state=seed,
                              reg_covar=1e-6).fit(flat)
        gmm.random_state = seed
        z, _ = gmm.sample(n)
    z = z[np.random.default_rng(seed).permutation(n)]  # GaussianMixture.sample orders by component
    return jnp.asarray(z.reshape(n, *np.shape(codes)[1:]), jnp.float32)


class SecondStage(nnx.Module):
    """Dai & Wipf's second VAE on codes u: q(v|u) = N(mean, diag var) and p(u|v) = N(mlp(v), gamma I),
    gamma learned (log_gamma), which lets it fit codes that fill only part of their space."""

    def __init__(self, dim: int, hidden: int, rngs: nnx.Rngs):
        self.enc = nnx.Sequential(nnx.Linear(dim, hidden, rngs=rngs), jax.nn.relu,
                                  nnx.Linear(hidden, hidden, rngs=rngs), jax.nn.relu,
                                  nnx.Linear(hidden, 2 * dim, rngs=rngs))
        self.dec = nnx.Sequential(nnx.Linear(dim, hidden, rngs=rngs), jax.nn.relu,
                                  nnx.Linear(hidden, hidden, rngs=rngs), jax.nn.relu,
                                  nnx.Linear(hidden, dim, rngs=rngs))
        self.log_gamma = nnx.Param(jnp.zeros(()))

    def loss(self, u, key):
        """-ELBO per code, averaged (nats): KL + ||u - mlp(v)||^2 / 2 gamma + d/2 log(2 pi gamma)."""
        mean, logvar = jnp.split(self.enc(u), 2, axis=-1)
        v = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, -1)
        lg = self.log_gamma[...]
        rec = 0.5 * jnp.sum((u - self.dec(v)) ** 2, -1) / jnp.exp(lg)
        rec += 0.5 * u.shape[-1] * (lg + jnp.log(2 * jnp.pi))
        return jnp.mean(kl + rec)


def two_stage_fit(codes, key, steps: int = 3000, hidden: int = 256, batch_size: int = 256):
    """The second-stage VAE trained on standardized codes [N, D] (Adam, one compiled lax.scan);
    (model, per-dimension mean and std of the codes, the loss of the first and last 100 steps)."""
    u = np.asarray(codes, np.float32).reshape(len(codes), -1)
    mu, sd = u.mean(0), u.std(0) + 1e-6
    u = jnp.asarray((u - mu) / sd)
    k_init, k_train = jax.random.split(key)
    graphdef, params = nnx.split(SecondStage(u.shape[1], hidden, nnx.Rngs(k_init)))
    tx = optax.adam(optax.cosine_decay_schedule(1e-3, steps))

    @jax.jit
    def train(params, key):
        def step(carry, k):
            p, opt = carry
            k_idx, k_v = jax.random.split(k)
            idx = jax.random.randint(k_idx, (min(batch_size, len(u)),), 0, len(u))
            loss, grads = jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(u[idx], k_v))(p)
            updates, opt = tx.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), loss

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, steps))
        return params, losses

    params, losses = train(params, k_train)
    losses = np.asarray(losses)
    return nnx.merge(graphdef, params), mu, sd, (float(losses[:100].mean()), float(losses[-100:].mean()))


def two_stage_sample(codes, key, n: int):
    """n codes from the second-stage VAE fit to `codes`: u ~ N(mlp(v), gamma I), v ~ N(0, I), the
    model's own density (the decoder's mean alone would shrink the spread by gamma), un-standardized."""
    k_fit, k_v, k_u = jax.random.split(key, 3)
    model, mu, sd, _ = two_stage_fit(codes, k_fit)
    draw = lambda m, v, eps: m.dec(v) + jnp.exp(0.5 * m.log_gamma[...]) * eps  # noqa: E731
    v, eps = jax.random.normal(k_v, (n, len(mu))), jax.random.normal(k_u, (n, len(mu)))
    z = np.asarray(nnx.jit(draw)(model, v, eps)) * sd + mu
    return jnp.asarray(z.reshape(n, *np.shape(codes)[1:]), jnp.float32)


def sample(cfg, codes, key, n: int):
    """n codes drawn ex post from a density fit to `codes`."""
    if cfg.eval.sampler == "gmm":
        return gmm_sample(codes, key, n, cfg.eval.sampler_components)
    if cfg.eval.sampler == "two_stage":
        return two_stage_sample(codes, key, n)
    eps = jax.random.normal(key, (n, *codes.shape[1:]))
    return jnp.asarray(codes.mean(0)) + jnp.asarray(codes.std(0)) * eps


@dataclass
class Fields:
    sampler: str = "gaussian"  # the ex-post density on codes of a model without a prior (SAMPLERS)
    sampler_components: int = 10  # gmm: mixture components


class Sampler(Evaluation):
    name = "sampler"
    Fields = Fields

    def asked(self, cfg) -> bool:
        return False  # not an evaluation of its own: the figures and load_run(...).sample use it

    def validate(self, cfg) -> None:
        one_of(cfg.eval.sampler, SAMPLERS, "eval.sampler")
        k = cfg.eval.sampler_components
        check(k >= 1, f"eval.sampler_components={k} must be >= 1")

    def run(self, ctx):
        return {}, {}


PART = Sampler()
