"""noise=speckle, the worked example of docs/extending.md (a corruption): its statistics, its level
shared with gaussian noise (one vmapped program per sweep), the denoising evaluation, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg

from aeflax import parts, training, vmap_sweep
from aeflax.config import ConfigError, validate

SPECKLE = parts.registry()["noise"]["speckle"]
KEYS = jax.random.split(jax.random.key(0), 200)


@jax.jit
def corrupt(x, std):
    return SPECKLE.corrupt_batch(KEYS, x, {"noise_std": std})


def test_speckle_has_the_asked_relative_std_leaves_black_alone_and_stays_in_range():
    x = jnp.full((200, 28, 28, 1), 0.5)
    rel = (np.asarray(corrupt(x, 0.2)) - 0.5) / 0.5  # no clipping at 5 sigma
    assert abs(rel.std() - 0.2) < 0.002 and abs(rel.mean()) < 0.002
    x = x.at[:, :14].set(0.0)
    noisy = np.asarray(corrupt(x, 3.0))
    assert np.all(noisy[:, :14] == 0.0)  # black stays black
    assert noisy.min() == 0.0 and noisy.max() == 1.0  # clipped to the data range


def test_its_level_is_noise_std_a_sweep_over_it_is_one_program_and_it_needs_one():
    cfgs = [make_cfg("noise.kind=speckle", f"noise.std={s}") for s in (0.1, 0.3)]
    assert training.hyperparameters(cfgs[1], 1)["noise_std"] == np.float32(0.3)
    gaussian = make_cfg("noise.kind=gaussian", "noise.std=0.1")
    assert vmap_sweep.group_configs([*cfgs, gaussian]) == [[0, 1], [2]]
    with pytest.raises(ConfigError, match="noise.kind=speckle needs noise.std > 0"):
        validate(make_cfg("noise.kind=speckle"))
    validate(make_cfg("eval.denoising_levels=[0.2]", "eval.denoising_kind=speckle"))  # eval=denoising too


def test_a_speckle_denoising_autoencoder_trains(fmnist_small):
    cfg = make_cfg("noise.kind=speckle", "noise.std=0.5", "train.epochs=2")
    first, last = training.fit(cfg, fmnist_small, progress=False).history
    assert last["train/loss"] < first["train/loss"] and last["test/loss"] < first["test/loss"]
