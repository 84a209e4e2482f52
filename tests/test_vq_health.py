"""Healthy VQ codebooks (bottleneck.kmeans_init, bottleneck.dead_code_threshold): k-means leaves no code
unused on its own data, a dead-code restart revives a code never chosen, both inside the compiled epoch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx

from aeflax import training
from aeflax.config import ConfigError, validate
from aeflax.parts.bottleneck.vq import USAGE_DECAY, VectorQuantized, kmeans, nearest


def clustered(n=2000, d=4, clusters=10, seed=0):
    """Tight clusters: far fewer than the codes, so plain Lloyd steps leave codes empty."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 5
    return jnp.asarray(centres[rng.integers(clusters, size=n)] + 0.1 * rng.normal(size=(n, d)), jnp.float32)


def test_kmeans_leaves_no_code_unused_on_its_own_data():
    x = clustered()
    codebook = jax.jit(kmeans, static_argnums=2)(jax.random.key(0), x, 64)
    assert len(np.unique(np.asarray(nearest(x, codebook)[0]))) == 64
    centroids = np.asarray(codebook)  # and they are centroids: each code the mean of its vectors
    idx = np.asarray(nearest(x, codebook)[0])
    assert np.mean([np.linalg.norm(centroids[k] - np.asarray(x)[idx == k].mean(0)) for k in range(64)]) < 0.1


def test_dead_code_restart_revives_a_code_never_chosen():
    vq = VectorQuantized(16, 8, 2, 16, 0.99, nnx.Rngs(params=0), dead_code_threshold=15.0)
    vq.codebook[...] = vq.codebook[...].at[0].set(1e3)  # far from every vector: never the nearest
    vq.embed_sum[...] = vq.codebook[...] * vq.cluster_size[...][:, None]
    h = jax.random.normal(jax.random.key(1), (64, 16))
    step = nnx.jit(lambda m, h: m(h, train=True))
    first = step(vq, h)
    assert 0 not in np.asarray(first["indices"]) and float(first["restarted"]) == 0  # all start average
    # average use 64 * 4 / 16 = 16 vectors per step: unused, code 0 falls below 15 after
    # log(15 / 16) / log(USAGE_DECAY) steps and is re-seeded from the batch's vectors
    for _ in range(int(np.ceil(np.log(15 / 16) / np.log(USAGE_DECAY)))):
        out = step(vq, h)
    assert float(out["restarted"]) >= 1 and float(jnp.max(jnp.abs(vq.codebook[0]))) < 100
    assert 0 in np.asarray(vq(h, train=False)["indices"])


def test_the_options_need_an_ema_codebook_and_leave_other_runs_alone():
    for option in ("bottleneck.kmeans_init=true", "bottleneck.dead_code_threshold=1"):
        with pytest.raises(ConfigError, match="need bottleneck=vq with ema_decay > 0"):
            validate(make_cfg("bottleneck.kind=vq", option))
    cfg = make_cfg("bottleneck.kind=vq", "bottleneck.ema_decay=0.99")
    plain = training.init_state(cfg, (28, 28, 1), 1)[1]
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(plain.other)]
    assert paths and not any("usage" in p or "healthy_key" in p for p in paths), paths  # no new state


@pytest.mark.slow
def test_kmeans_and_restarts_inside_the_compiled_epoch(fmnist_small):
    """A conv VQ-VAE with both options trains; restarts happen inside the compiled epoch and are logged.

    Batch 64: 3136 vectors a step, 6.1 per code on average; a threshold of 5 restarts an unused code
    after log(5 / 6.1) / log(USAGE_DECAY) = 20 steps, within the first epoch's 31.
    """
    cfg = make_cfg("model.architecture=conv", "bottleneck.kind=vq", "bottleneck.ema_decay=0.99",
                   "bottleneck.kmeans_init=true", "bottleneck.dead_code_threshold=5.0", "train.epochs=2",
                   "train.batch_size=64")
    validate(cfg)
    first, last = training.fit(cfg, fmnist_small, progress=False).history
    assert last["train/loss"] < first["train/loss"] and last["test/loss"] < first["test/loss"]
    assert first["train/restarted"] > 0 and 0 < last["train/dead_codes"] < 1, (first, last)
    assert 0 < last["train/codebook_usage"] <= 1 and last["train/perplexity"] > 1
