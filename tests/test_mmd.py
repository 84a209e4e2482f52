"""penalty.mmd: WAE-MMD (Tolstikhin et al. 2018) and InfoVAE / MMD-VAE (Zhao et al. 2019): the MMD's
known values against a NumPy reference, its weight traced (one vmapped program), and training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg

from aeflax import training, vmap_sweep
from aeflax.config import ConfigError, traced_fields, validate
from aeflax.parts.penalty.mmd import mmd


def mmd_numpy(x, y, kind, scale, unbiased):
    """The MMD^2 estimator written out pair by pair."""
    c = 2.0 * x.shape[1] * scale
    k = lambda a, b: c / (c + np.sum((a - b) ** 2)) if kind == "imq" else np.exp(-np.sum((a - b) ** 2) / c)  # noqa: E731
    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j or not unbiased)
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j or not unbiased)
    kxy = sum(k(a, b) for a in x for b in y)
    if unbiased:
        return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2 * kxy / (n * m)
    return kxx / n**2 + kyy / m**2 - 2 * kxy / (n * m)


@pytest.mark.parametrize("kind", ["imq", "rbf"])
def test_mmd_is_zero_for_a_sample_with_itself_grows_with_a_shift_and_matches_numpy(kind):
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(30, 3)).astype(np.float32)
    assert float(mmd(x, x, kind, 1.0, unbiased=False)) == pytest.approx(0.0, abs=1e-6)
    shifts = [float(mmd(x, y + s, kind, 1.0)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert abs(shifts[0]) < 0.05 and shifts == sorted(shifts) and shifts[-1] > 0.3, shifts
    for unbiased in (True, False):
        for scale in (0.5, 2.0):
            np.testing.assert_allclose(mmd(x, y + 0.5, kind, scale, unbiased),
                                       mmd_numpy(x, y + 0.5, kind, scale, unbiased), rtol=1e-4, atol=1e-6)


def test_mmd_weight_is_traced_and_refused_on_a_quantized_code():
    assert {"penalty.mmd", "penalty.mmd_scale"} <= set(traced_fields())
    cfgs = [make_cfg("bottleneck.activation=linear", f"penalty.mmd={w}") for w in (0.1, 1.0, 10.0)]
    assert training.hyperparameters(cfgs[1], 1)["mmd"] == np.float32(1.0)
    assert vmap_sweep.group_configs([*cfgs, make_cfg()]) == [[0, 1, 2], [3]]  # no MMD: another program
    with pytest.raises(ConfigError, match="penalty.mmd needs a continuous code"):
        validate(make_cfg("bottleneck.kind=vq", "penalty.mmd=1"))
    with pytest.raises(ConfigError, match="penalty.mmd_kernel"):
        validate(make_cfg("penalty.mmd_kernel=laplace"))


def test_the_prior_of_a_posterior_bottleneck_is_its_own(monkeypatch):
    """With bottleneck=gaussian the MMD compares the codes with the bottleneck's prior_sample."""
    from aeflax.objectives import Batch
    from aeflax.parts import bottleneck_of
    from aeflax.parts.penalty.mmd import prior_codes

    cfg = make_cfg("bottleneck.kind=gaussian", "loss.name=elbo")
    sevens = lambda self, key, n, b, model: jnp.full((n, 32), 7.0)  # noqa: E731
    monkeypatch.setattr(type(bottleneck_of(cfg)), "prior_sample", sevens)
    batch = Batch(None, None, None, jax.random.key(0), {"code": jnp.zeros((4, 32))}, cfg)
    assert float(jnp.min(prior_codes(batch, 4))) == 7.0
    det = Batch(None, None, None, jax.random.key(0), {"code": jnp.zeros((4000, 2))}, make_cfg())
    z = prior_codes(det, 4000)  # no posterior: N(0, I) shaped like the code
    assert z.shape == (4000, 2) and abs(float(jnp.std(z)) - 1) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["wae", "info_vae"])
def test_mmd_variants_train_on_fashion_mnist(variant, fmnist_small):
    from test_variants import _compose

    cfg = _compose(f"variant={variant}", "train.epochs=2", "logger=disabled", "eval.figures=false")
    validate(cfg)
    first, last = training.fit(cfg, fmnist_small, progress=False).history
    assert last["train/loss"] < first["train/loss"] and last["test/loss"] < first["test/loss"]
    assert last["train/mmd"] < first["train/mmd"] or last["train/mmd"] < 0.01, (first, last)
