"""penalty.factor_gamma, FactorVAE (Kim & Mnih 2018): the permuted codes, the discriminator's loss, its
own optimizer (each objective moves only its own parameters), its state checkpointed and resumed, and
the vmapped sweep over gamma."""

import functools
import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import make_cfg
from flax import nnx
from test_variants import FAST_COMPILE, _compose, _init

from aeflax import checkpoint, training, vmap_sweep
from aeflax.config import ConfigError, traced_fields, validate
from aeflax.parts.penalty.factor import discriminator_accuracy, discriminator_loss, permute_dims
from aeflax.parts.penalty.weight_norms import kernel_norms


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def without_owned(params):
    return {k: v for k, v in params.items() if k != "owned"}


def test_permuted_codes_keep_each_dimensions_marginal():
    z = jax.random.normal(jax.random.key(0), (1000, 6))
    z = z.at[:, 1].set(z[:, 0])  # two copies of one dimension: correlation 1
    shuffled = np.asarray(permute_dims(jax.random.key(1), z))
    z = np.asarray(z)
    np.testing.assert_array_equal(np.sort(shuffled, axis=0), np.sort(z, axis=0))  # each column a permutation
    assert not np.array_equal(shuffled, z)
    assert abs(np.corrcoef(shuffled[:, 0], shuffled[:, 1])[0, 1]) < 4 / math.sqrt(len(z))  # copies decoupled
    rows = {tuple(r) for r in z}
    assert sum(tuple(r) in rows for r in shuffled) < 5  # dimensions shuffled apart, not whole codes


def test_the_discriminators_loss_and_accuracy():
    zeros = jnp.zeros((8, 2))
    assert float(discriminator_loss(zeros, zeros)) == pytest.approx(math.log(2))  # no idea: log 2 nats
    sure = jnp.array([[10.0, -10.0]] * 8)  # codes called codes, permuted codes called permuted
    assert float(discriminator_loss(sure, -sure)) < 1e-8
    assert float(discriminator_accuracy(sure, -sure)) == 1.0
    assert float(discriminator_accuracy(-sure, sure)) == 0.0


def test_gamma_is_traced_the_rest_makes_a_program_and_bad_combinations_fail_with_one_line():
    assert "penalty.factor_gamma" in traced_fields()
    cfg = make_cfg("bottleneck.kind=gaussian", "loss.name=elbo", "penalty.factor_gamma=35")
    validate(cfg)
    assert training.hyperparameters(cfg, 1)["factor_gamma"] == np.float32(35)
    other_gamma = make_cfg("bottleneck.kind=gaussian", "loss.name=elbo", "penalty.factor_gamma=5", "seed=1")
    wider = make_cfg("bottleneck.kind=gaussian", "loss.name=elbo", "penalty.factor_gamma=5",
                     "penalty.factor_width=64")
    vae = make_cfg("bottleneck.kind=gaussian", "loss.name=elbo")
    assert vmap_sweep.group_configs([cfg, other_gamma, wider, vae]) == [[0, 1], [2], [3]]
    for overrides, message in [(["penalty.factor_gamma=10"], "needs a VAE's sampled code"),
                               (["penalty.factor_width=0"], "factor_width=0 must be >= 1"),
                               (["penalty.factor_lr=0"], r"factor_lr=0.0 must be > 0")]:
        with pytest.raises(ConfigError, match=message) as err:
            validate(make_cfg(*overrides))
        assert "\n" not in str(err.value)


def test_without_a_part_that_owns_a_module_the_optimizer_is_the_models_alone():
    cfg = _compose("variant=vae")
    _, state = _init(cfg, 1, compile=False)
    assert "owned" not in state.params
    assert isinstance(state.opt_state[0], optax.ScaleByAdamState)  # not a multi_transform's partition


def test_weight_penalties_leave_the_discriminator_to_its_own_objective():
    small = ("model.hidden=[16]", "bottleneck.code_size=4", "penalty.factor_width=8")
    models = [nnx.jit(lambda cfg=cfg: training.make_model(cfg, (28, 28, 1), 0))()
              for cfg in (_compose("variant=vae", *small), _compose("variant=factor_vae", *small))]
    assert not hasattr(models[0], "owned") and hasattr(models[1], "owned")
    assert kernel_norms(models[1]) == kernel_norms(models[0])  # the same autoencoder's kernels, no more


@functools.cache
def one_step(variant: str, gamma=None):
    """(initial state, state after one step) of `variant` on 32 real images, batch 32; `gamma`
    overrides hp['factor_gamma'] (one compiled program for every value)."""
    from aeflax import data
    from aeflax.config import DataConfig

    cfg = _compose(f"variant={variant}", "train.batch_size=32")
    images = data.load(DataConfig(train_limit=32, test_limit=1)).train.images
    graphdef, state = _init(cfg, 1)
    hp = training.hyperparameters(cfg, 1)
    if gamma is not None:
        hp["factor_gamma"] = jnp.float32(gamma)
    epoch = jax.jit(training.make_train_epoch(graphdef, cfg, 32), compiler_options=FAST_COMPILE)
    return state, epoch(jax.tree.map(jnp.copy, state), images, hp)[0]


@pytest.mark.slow  # compiles two training steps (about 20 s on the 2-core VM under load)
def test_the_vae_and_the_discriminator_move_only_by_their_own_gradients():
    vae_init, vae = one_step("vae")
    init, off = one_step("factor_vae", 0.0)  # the discriminator trains, its TC term weighs nothing
    _, on = one_step("factor_vae", 100.0)
    assert leaves_equal(without_owned(init.params), vae_init.params)  # the same VAE to start from
    # the discriminator's loss does not move the VAE: with gamma 0 the VAE steps as the plain one
    assert leaves_equal(without_owned(off.params), vae.params)
    assert not leaves_equal(without_owned(on.params), vae.params)  # gamma > 0 does move it
    # the VAE's TC term does not move the discriminator: its step is the same at gamma 0 and 100
    assert not leaves_equal(off.params["owned"], init.params["owned"])
    assert leaves_equal(on.params["owned"], off.params["owned"])
    adam = on.opt_state.inner_states["factor_tc"].inner_state[0]  # its own Adam, one step taken
    assert int(adam.count) == 1
    assert float(jnp.abs(adam.mu["owned"]["factor_tc"]["out"]["kernel"][...]).max()) > 0


@pytest.mark.slow  # trains three times (with compiles) and checkpoints
def test_the_discriminator_and_its_optimizer_state_are_checkpointed_and_resumed_bit_identically(
        fmnist_small, tmp_path):
    cfg = _compose("variant=factor_vae", "train.epochs=2", "train.batch_size=100")
    small = replace(fmnist_small, train=fmnist_small.train.take(400), test=fmnist_small.test.take(100))
    reference = training.fit(cfg, small, progress=False)
    mgr = checkpoint.manager(tmp_path)
    saved = {}

    def on_epoch(epoch, metrics, state):
        checkpoint.save(mgr, epoch, state)
        saved[epoch] = jax.tree.map(np.array, state)

    first = training.fit(cfg, small, progress=False, on_epoch=on_epoch, stop=lambda: bool(saved))
    assert [h["epoch"] for h in first.history] == [1]
    graphdef, fresh = training.init_state(cfg, small.image_shape, 4)
    restored = checkpoint.restore(mgr, fresh)
    assert leaves_equal(restored, saved[1])  # every leaf, the discriminator's and its Adam's among them
    disc_params = restored.params["owned"]["factor_tc"]
    disc_adam = restored.opt_state.inner_states["factor_tc"].inner_state[0]
    assert not leaves_equal(disc_params, fresh.params["owned"]["factor_tc"]) and int(disc_adam.count) == 4
    assert leaves_equal(disc_adam, saved[1].opt_state.inner_states["factor_tc"].inner_state[0])
    resumed = training.fit(cfg, small, state=restored, graphdef=graphdef, progress=False)
    assert leaves_equal(resumed.state, reference.state)  # as if never stopped
    assert [h["train/factor_tc"] for h in resumed.history] == [reference.history[1]["train/factor_tc"]]


@pytest.mark.slow  # a vmapped group and two solo runs
def test_vectorized_gammas_equal_their_solo_runs(fmnist_small):
    from test_perf_equivalence import assert_histories_close

    small = replace(fmnist_small, train=fmnist_small.train.take(512), test=fmnist_small.test.take(256))
    cfgs = [_compose("variant=factor_vae", "train.epochs=2", "train.batch_size=64", *extra)
            for extra in (["penalty.factor_gamma=5"], ["penalty.factor_gamma=40", "seed=1"])]
    solos = [training.fit(cfg, small, progress=False) for cfg in cfgs]
    group = vmap_sweep.train_group(cfgs, small)
    for member, solo in zip(group, solos, strict=True):
        assert_histories_close(member.history, solo.history, rtol=1e-4)
        np.testing.assert_allclose(member.state.params["owned"]["factor_tc"]["out"]["kernel"].value,
                                   solo.state.params["owned"]["factor_tc"]["out"]["kernel"].value, atol=1e-5)
    assert group[0].history[-1]["train/factor_tc"] != group[1].history[-1]["train/factor_tc"]
