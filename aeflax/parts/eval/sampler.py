"""Ex-post samplers (Ghosh et al. 2020): what makes an autoencoder without a prior a generator. A
density fit to codes, decoded: `gaussian` (a diagonal Gaussian, the default) or `gmm` (a
scikit-learn Gaussian mixture with full covariances). The figures' samples and
`aeflax.load_run(...).sample(n, like=images)` draw from it; bottlenecks with a prior use the prior."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits

from aeflax.checks import check, one_of
from aeflax.parts import Evaluation

SAMPLERS = ("gaussian", "gmm")


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


def sample(cfg, codes, key, n: int):
    """n codes drawn ex post from a density fit to `codes`."""
    if cfg.eval.sampler == "gmm":
        return gmm_sample(codes, key, n, cfg.eval.sampler_components)
    eps = jax.random.normal(key, (n, *codes.shape[1:]))
    return jnp.asarray(codes.mean(0)) + jnp.asarray(codes.std(0)) * eps


@dataclass
class Fields:
    sampler: str = "gaussian"  # the ex-post density on codes of a model without a prior: gaussian | gmm
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
