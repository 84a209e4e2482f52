"""The fast paths compute what the plain ones do: CPU convs, vectorized sweeps, several devices."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, make_cfg
from flax import nnx
from jax.extend.core import jaxprs_in_params

from aeflax import training, vmap_sweep
from aeflax.models import conv


def strip(history):
    return [{k: v for k, v in h.items() if "seconds" not in k} for h in history]


def assert_histories_close(a, b, rtol=1e-5, atol=1e-6):
    a, b = strip(a), strip(b)
    assert [sorted(h) for h in a] == [sorted(h) for h in b]
    for ha, hb in zip(a, b, strict=True):
        for k in ha:
            assert np.isclose(ha[k], hb[k], rtol=rtol, atol=atol), (k, ha[k], hb[k])


# (height, kernel, stride, c_in, c_out): im2col (widening) and shift-add (narrowing) convs,
# odd sizes, kernels larger / smaller than the stride
SHAPES = [(28, 3, 2, 1, 16), (9, 5, 3, 2, 3), (8, 3, 2, 16, 1)]


DN = ("NHWC", "HWIO", "NHWC")
NATIVE = {"conv": lambda x, w, s: jax.lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=DN),
          "transpose": lambda x, w, s: jax.lax.conv_transpose(x, w, (s, s), "SAME", dimension_numbers=DN)}
FAST = {"conv": lambda x, w, s: conv.conv_im2col(x, w, None, s),
        "transpose": lambda x, w, s: conv.conv_transpose_phases(x, w, None, s)}
# 2x nearest upsampling then a stride-1 conv (LeNet's decoder), computed as a transposed conv's phases
NATIVE["upsampled"] = lambda x, w, s: NATIVE["conv"](conv.upsample2(x), w, 1)
FAST["upsampled"] = lambda x, w, s: conv.upsampled_conv_phases(x, w, None)
# stride 1 (LeNet's convs): widening (im2col), narrowing (shift-add), an even kernel
STRIDE_ONE = [(28, 5, 1, 1, 16), (14, 5, 1, 16, 32), (7, 4, 1, 8, 8), (7, 5, 1, 16, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.parametrize("h,k,s,c_in,c_out", SHAPES)
def test_cpu_convs_equal_native_values_and_gradients(kind, h, k, s, c_in, c_out):
    x = jax.random.normal(jax.random.key(h), (2, h, h + 1, c_in))
    w = jax.random.normal(jax.random.key(k), (k, k, c_in, c_out)) / k
    assert_equal_to_native(kind, x, w, s)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["conv", "upsampled"])
@pytest.mark.parametrize("h,k,s,c_in,c_out", STRIDE_ONE)
def test_stride_one_and_upsampling_convs_equal_native_values_and_gradients(kind, h, k, s, c_in, c_out):
    x = jax.random.normal(jax.random.key(h), (2, h, h + 1, c_in))
    w = jax.random.normal(jax.random.key(k), (k, k, c_in, c_out)) / (k * np.sqrt(c_in))  # outputs ~ 1
    assert_equal_to_native(kind, x, w, s)


@pytest.mark.parametrize("h,k,s,c_in,c_out", SHAPES + STRIDE_ONE)
def test_a_first_layer_computes_its_kernel_gradient_alone(h, k, s, c_in, c_out):
    """Where nothing asks for the input's gradient (the image into the first layer) the conv computes
    the kernel's alone, from the input's patches where those are narrower than dy's: for a widening
    stride-1 conv no array of dy's k*k*C_out columns per pixel is built (LeNet's 1 -> 16 first layer
    spent most of its training step on one)."""
    x = jax.random.normal(jax.random.key(h), (2, h, h + 1, c_in))
    w = jax.random.normal(jax.random.key(k), (k, k, c_in, c_out)) / k
    grads = [jax.jit(jax.grad(lambda w, f=f: jnp.sum(jnp.sin(f(x, w, s)))))(w) for f in (FAST["conv"],
                                                                                          NATIVE["conv"])]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-4)
    if s == 1 and c_in < c_out:
        dy_patches = 2 * h * (h + 1) * k * k * c_out
        jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(FAST["conv"](x, w, s))))(w)
        assert max(np.prod(v.aval.shape) for e in _eqns(jaxpr.jaxpr) for v in e.outvars) < dy_patches


def _eqns(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for sub in jaxprs_in_params(e.params):
            yield from _eqns(sub)


def assert_equal_to_native(kind, x, w, s):
    """The CPU formulation's values and both gradients equal the native op's."""
    np.testing.assert_allclose(FAST[kind](x, w, s), NATIVE[kind](x, w, s), rtol=1e-5, atol=1e-5)
    grads = [jax.grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w, s))), argnums=(0, 1))(x, w)
             for f in (FAST[kind], NATIVE[kind])]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_shift_add_gradient_builds_the_columns_once():
    """The narrowing conv's gradient gathers its k*k taps into the columns in one
    concatenation; one zero-padded copy of all the columns per tap (indexing a stacked
    array) made LeNet's training step 9x slower."""
    x, w = jnp.ones((2, 8, 8, 16)), jnp.ones((5, 5, 16, 1))  # 16 -> 1: the shift-add path
    jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(conv.conv_im2col(x, w, None, 1)), (0, 1)))(x, w)
    cols = 2 * 12 * 12 * 25  # batch, padded height and width, taps (one output channel)

    sizes = [np.prod(e.outvars[0].aval.shape) for e in _eqns(jaxpr.jaxpr)]
    assert sum(size >= cols for size in sizes) < 5


@pytest.mark.slow
@pytest.mark.parametrize("kind,batch", [("conv", 2 * conv.CHUNK), ("transpose", 2 * conv.CHUNK),
                                        ("upsampled", 2 * conv.CHUNK),  # whole chunks, and a rest:
                                        ("conv", 2 * conv.CHUNK + 5), ("transpose", 2 * conv.CHUNK + 5)])
def test_cpu_convs_of_a_large_batch_run_by_chunks_with_the_same_values(kind, batch):
    x = jax.random.normal(jax.random.key(0), (batch, 6, 6, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4)) / 3
    assert_equal_to_native(kind, x, w, 2)


def test_a_batch_past_whole_chunks_builds_no_patch_matrix_of_the_whole_batch():
    """An evaluation batch of 1000 is 31 chunks of 32 and a rest of 8, not one patch matrix of all
    1000 images (LeNet's test pass took 3.4-4.2 s whole, 2.3-2.6 s by chunks)."""
    n, k, c_in = 2 * conv.CHUNK + 5, 3, 3
    x, w = jnp.ones((n, 8, 8, c_in)), jnp.ones((k, k, c_in, 16))
    jaxpr = jax.make_jaxpr(lambda x: conv.conv_im2col(x, w, None, 1))(x)
    assert max(np.prod(v.aval.shape) for e in _eqns(jaxpr.jaxpr) for v in e.outvars) < n * 64 * k * k * c_in


def test_cpu_convs_differentiate_in_forward_mode_inside_forward_mode():
    """Their custom VJPs have no forward mode: conv.forward_mode() (RAE-GP's decoder Jacobian) gives
    jacfwd the same values through the plain formulation."""
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 2))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 3)) / 3
    for kind in ("conv", "transpose", "upsampled"):
        with conv.forward_mode():
            fast = jax.jacfwd(lambda x, f=FAST[kind]: f(x, w, 2))(x)
        native = jax.jacfwd(lambda x, f=NATIVE[kind]: f(x, w, 2))(x)
        np.testing.assert_allclose(fast, native, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_layers_route_through_the_cpu_convs():
    rngs = nnx.Rngs(0)
    x = jax.random.normal(jax.random.key(1), (3, 14, 14, 4))
    c = nnx.Conv(4, 6, (3, 3), strides=2, padding="SAME", rngs=rngs)
    t = nnx.ConvTranspose(4, 6, (3, 3), strides=2, padding="SAME", rngs=rngs)
    np.testing.assert_allclose(conv.apply_conv(c, x, "im2col"), c(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(conv.apply_conv_transpose(t, x, "im2col"), t(x), rtol=1e-5, atol=1e-5)


def test_conv_impl_auto_is_native_off_cpu():
    assert conv.resolve_impl("native") == "native"
    assert conv.resolve_impl("auto") == ("im2col" if jax.default_backend() == "cpu" else "native")


@pytest.mark.slow
def test_conv_autoencoder_trains_the_same_with_either_impl(fmnist_small):
    base = ("model.architecture=conv", "bottleneck.kind=identity", "train.epochs=2", "train.batch_size=64",
            "data.train_limit=512", "data.test_limit=256")
    small = replace(fmnist_small, train=fmnist_small.train.take(512), test=fmnist_small.test.take(256))
    native = training.fit(make_cfg(*base, "model.conv.impl=native"), small, progress=False).history
    fast = training.fit(make_cfg(*base, "model.conv.impl=im2col"), small, progress=False).history
    assert_histories_close(fast, native, rtol=1e-4)
    assert native[-1]["test/mse"] < native[0]["test/mse"]  # it learns


def test_sweep_groups_follow_the_program():
    cfgs = [make_cfg("seed=0"), make_cfg("seed=1", "optimizer.learning_rate=0.01", "name=x"),
            make_cfg("bottleneck.code_size=32"), make_cfg("penalty.l1_activity=0.001"),
            make_cfg("penalty.l1_activity=0.01", "seed=3"), make_cfg("noise.kind=gaussian", "noise.std=0.1")]
    assert vmap_sweep.group_configs(cfgs) == [[0, 1], [2], [3, 4], [5]]


@pytest.mark.slow
def test_vectorized_group_members_equal_their_solo_runs(fmnist_small):
    base = ("train.epochs=2", "train.batch_size=128", "noise.kind=gaussian", "data.train_limit=2000",
            "data.test_limit=500")
    cfgs = [make_cfg(*base, "noise.std=0.1"),
            make_cfg(*base, "noise.std=0.4", "optimizer.learning_rate=0.003", "seed=1"),
            make_cfg(*base, "noise.std=0.2", "seed=2")]
    solos = [training.fit(cfg, fmnist_small, progress=False) for cfg in cfgs]
    for chunk in (3, 2):  # all side by side; two at a time, the third in a vmap of its own
        group = vmap_sweep.train_group(cfgs, fmnist_small, chunk=chunk)
        for member, solo in zip(group, solos, strict=True):
            assert_histories_close(member.history, solo.history)
            np.testing.assert_allclose(member.state.params["decoder"]["layers"][0]["kernel"].value,
                                       solo.state.params["decoder"]["layers"][0]["kernel"].value, atol=1e-5)
    assert group[0].history[-1]["test/mse"] != group[1].history[-1]["test/mse"]
    assert group[0].history[-1]["test/mse"] < group[0].history[0]["test/mse"]  # it learns


@pytest.mark.slow
def test_vmap_launcher_writes_every_members_record(tmp_path, fmnist_small):
    args = ["logger.mode=disabled", "eval.figures=false", "train.epochs=1", "train.batch_size=128",
            "data.train_limit=2000", "data.test_limit=500"]
    env = dict(os.environ, WANDB_MODE="disabled")
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), "-m", "hydra/launcher=vmap",
                          "hydra/hydra_logging=disabled", *args, "seed=0,1", f"hydra.sweep.dir={tmp_path}",
                          "hydra.sweep.subdir=${hydra.job.num}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    epoch_seconds = set()
    for seed in (0, 1):
        run = Path(tmp_path) / str(seed)
        summary = json.loads((run / "summary.json").read_text())
        epoch_seconds.add(summary["time/epoch_seconds"])
        assert summary["status"] == "finished" and summary["seed"] == seed
        assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1
        assert (run / "checkpoints").is_dir() and (run / ".hydra" / "config.yaml").exists()
        solo = training.fit(make_cfg(*args, f"seed={seed}"), fmnist_small, progress=False)
        assert np.isclose(summary["test/mse"], solo.history[-1]["test/mse"], rtol=1e-5)
    assert len(epoch_seconds) == 1  # one shared epoch: replayed from the group, not trained again


DP_SCRIPT = """
import json, sys
sys.path.insert(0, "tests")
import jax
from conftest import make_cfg
from aeflax import data, parallel, training
from aeflax.config import DataConfig
ds = data.load(DataConfig(train_limit=1024, test_limit=256))
cfg = make_cfg("train.epochs=2", "noise.kind=gaussian", "noise.std=0.2")
mesh = parallel.data_mesh(cfg.train.batch_size)
graphdef, state = training.init_state(cfg, ds.image_shape, 4)
epoch = jax.jit(training.make_train_epoch(graphdef, cfg, 1024, parallel.batched(mesh)))
hlo = epoch.lower(parallel.replicate(state, mesh), parallel.replicate(ds.train.images, mesh),
                  parallel.replicate(training.hyperparameters(cfg, 4), mesh)).compile().as_text()
history = training.fit(cfg, ds, progress=False).history
print(json.dumps({"devices": jax.device_count(), "all_reduce": "all-reduce" in hlo, "history": history}))
"""


@pytest.mark.slow
def test_data_parallel_on_four_devices_equals_one_device(fmnist_small):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", WANDB_MODE="disabled")
    out = subprocess.run([sys.executable, "-c", DP_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["all_reduce"]  # the batch really is split
    from aeflax import data
    from aeflax.config import DataConfig

    ds = data.load(DataConfig(train_limit=1024, test_limit=256))
    one = training.fit(make_cfg("train.epochs=2", "noise.kind=gaussian", "noise.std=0.2"), ds, progress=False)
    assert_histories_close(result["history"], one.history, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    (),
    pytest.param(("model.architecture=conv", "bottleneck.kind=identity"), marks=pytest.mark.slow),
    pytest.param(("model.hidden=[512,256]", "bottleneck.kind=gaussian", "loss.name=elbo"),
                 marks=pytest.mark.slow)])
def test_compiled_initialisation_equals_op_by_op(overrides):
    cfg = make_cfg(*overrides)
    _, params, other = training._initial_variables(cfg, (28, 28, 1), 3)
    _, params_eager, other_eager = nnx.split(training.make_model(cfg, (28, 28, 1), 3), nnx.Param, ...)
    compiled, eager = jax.tree.leaves((params, other)), jax.tree.leaves((params_eager, other_eager))
    for a, b in zip(compiled, eager, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
