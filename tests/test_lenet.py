"""model=lenet, the conv AE of Ruff et al. (Deep SAD's CAE baseline): its batch norm against
PyTorch's formula, its layers against the authors' network, and the train/eval switch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx

from aeflax import training
from aeflax.config import ConfigError, validate
from aeflax.models import lenet
from aeflax.models.lenet import BatchNorm

LENET = [  # conf/model/lenet.yaml as dotlist overrides (make_cfg composes no Hydra groups)
"model.architecture=lenet", "model.activation=leaky_relu", "model.init=pytorch_uniform",
         "model.hidden=[128]", "model.conv.channels=[16,32]", "model.conv.kernel_size=5",
         "bottleneck.code_size=64", "bottleneck.activation=linear"]

# Deep-SAD-PyTorch, src/networks/fmnist_LeNet.py: every weight of FashionMNIST_LeNet_Autoencoder
# as (shape in aeflax's layout, PyTorch's fan_in); none has a bias
TORCH_WEIGHTS = {
    "encoder/convs/0": ((5, 5, 1, 16), 1 * 25), "encoder/convs/1": ((5, 5, 16, 32), 16 * 25),
    "encoder/dense": ((1568, 128), 1568), "bottleneck/linear": ((128, 64), 128),
    "decoder/dense": ((64, 128), 64),
    # ConvTranspose2d(in, out): torch's fan_in is out * k * k
    "decoder/convs/0": ((5, 5, 8, 32), 32 * 25), "decoder/convs/1": ((5, 5, 32, 16), 16 * 25),
    "decoder/convs/2": ((5, 5, 16, 1), 1 * 25),
}


def _model(seed=0):
    cfg = make_cfg(*LENET)
    validate(cfg)
    return training.make_model(cfg, (28, 28, 1), seed)


def _params(model):
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path[:-1]): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}


def test_batchnorm_is_torchs_formula():
    x = np.random.default_rng(0).normal(2.0, 3.0, (8, 5, 5, 4)).astype(np.float32)
    bn = BatchNorm(4)
    bn.use_running_average = False
    y = np.asarray(bn(jnp.asarray(x)))
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))  # normalised by the biased variance
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-4), rtol=1e-4, atol=1e-4)
    n = 8 * 5 * 5  # running statistics: momentum 0.1 towards the mean and the unbiased variance
    np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    bn.use_running_average = True  # evaluation: the running statistics, nothing updated
    y_eval = np.asarray(bn(jnp.asarray(x)))
    np.testing.assert_allclose(y_eval, (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var * n / (n - 1) + 1e-4),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5)


def test_batchnorm_gradient_and_sums_equal_the_plain_formulas():
    """lenet.normalize (a custom VJP whose sums over the batch are matmuls with ones) against autodiff
    of the plain formula, and its means as accurate as jnp.mean on a training step's largest map
    (float64 truth); its forward mode (conv.forward_mode) differentiates through the batch statistics."""
    from aeflax.models import conv

    def plain(x):
        mean, var = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + 1e-4)

    x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, (128, 28, 28, 16)).astype(np.float32))
    dy = jnp.asarray(np.random.default_rng(1).normal(size=x.shape).astype(np.float32))
    (y, vjp), (y_plain, vjp_plain) = jax.vjp(lambda x: lenet.normalize(x, 1e-4), x), jax.vjp(plain, x)
    np.testing.assert_allclose(y, y_plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vjp(dy)[0], vjp_plain(dy)[0], rtol=1e-5, atol=1e-5)
    x64 = np.asarray(x, np.float64)
    truth = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + 1e-4)
    assert np.abs(np.asarray(y) - truth).max() <= 2 * np.abs(np.asarray(y_plain) - truth).max()
    small = x[:4, :5, :5]
    bn = BatchNorm(16)
    bn.use_running_average = False
    graphdef, state = nnx.split(bn)
    with conv.forward_mode():
        jvp = jax.jvp(lambda x: nnx.merge(graphdef, state, copy=True)(x), (small,), (dy[:4, :5, :5],))[1]
    np.testing.assert_allclose(jvp, jax.jvp(plain, (small,), (dy[:4, :5, :5],))[1], atol=1e-5)


def test_layers_are_the_authors_network():
    params = _params(_model())
    kernels = {k.removesuffix("/kernel"): v for k, v in params.items() if k.endswith("kernel")}
    assert {k: v.shape for k, v in kernels.items()} == {k: s for k, (s, _) in TORCH_WEIGHTS.items()}
    assert sum(v.size for v in kernels.values()) == 249_888  # the PyTorch model's parameter count
    assert [k for k in params if not k.endswith("kernel")] == ["bottleneck/linear/bias"]  # ours alone
    for name, (_, fan_in) in TORCH_WEIGHTS.items():  # PyTorch's default init: U(+-1/sqrt(fan_in))
        w, bound = np.asarray(kernels[name]), 1 / np.sqrt(fan_in)
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound, name
        np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.15, err_msg=name)


def test_the_code_layers_bias_cancels_in_batch_norm():
    """The only bias (the bottleneck's Dense, absent in the authors' fc2) feeds a Dense and then
    BatchNorm, which removes any constant: the reconstruction does not depend on it."""
    model = _model()
    x = jnp.asarray(np.random.default_rng(1).random((16, 28, 28, 1), np.float32))
    before = model(x, train=True)["recon"]
    model = _model()
    model.bottleneck.linear.bias[...] = jnp.full((64,), 3.0)
    np.testing.assert_allclose(model(x, train=True)["recon"], before, atol=1e-5)


def test_decoder_levels_and_train_eval_modes():
    model = _model()
    assert model.decoder.targets == (8, 14, 28)  # 4x4 map, then 8, 16 cropped to 14, 28
    x = jnp.asarray(np.random.default_rng(2).random((16, 28, 28, 1), np.float32))
    assert model(x)["recon"].shape == (16, 28, 28, 1)
    train_out = model(x, train=True)["recon"]  # batch statistics, running ones moved
    assert float(jnp.abs(model.encoder.norms[0].mean[...]).max()) > 0
    eval_out = model(x, train=False)["recon"]  # running statistics (not yet the data's)
    assert float(jnp.abs(train_out - eval_out).max()) > 1e-3
    assert all(bn.use_running_average for _, bn in nnx.iter_modules(model) if isinstance(bn, BatchNorm))


@pytest.mark.slow
def test_cpu_formulation_equals_native_convs_and_reduce_window_pooling(monkeypatch):
    """LeNet as it trains on CPU (im2col / shift-add convs, max-pool as reshape + max) computes
    what the plain formulation does (XLA's convs, lax.reduce_window pooling): the training
    forward pass and the loss's gradient of every weight."""
    x = jnp.asarray(np.random.default_rng(3).random((8, 28, 28, 1), np.float32))

    def recon_and_grads(impl):
        model = training.make_model(make_cfg(*LENET, f"model.conv.impl={impl}"), (28, 28, 1), 0)
        graphdef, params, other = nnx.split(model, nnx.Param, ...)

        def loss(params):
            recon = nnx.merge(graphdef, params, other, copy=True)(x, train=True)["recon"]
            return jnp.mean((recon - x) ** 2), recon

        return jax.grad(loss, has_aux=True)(params)[::-1]

    fast = recon_and_grads("im2col")
    monkeypatch.setattr(lenet, "max_pool2", lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2)))
    plain = recon_and_grads("native")
    np.testing.assert_allclose(fast[0], plain[0], rtol=1e-5, atol=1e-5)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(plain[1]))  # the code's bias: 0 +- 1e-9
    for a, b in zip(jax.tree.leaves(fast[1]), jax.tree.leaves(plain[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_lenet_config_errors():
    with pytest.raises(ConfigError, match="lenet has one dense layer"):
        validate(make_cfg(*LENET, "model.hidden=[]"))
    with pytest.raises(ConfigError, match="gated is a dense layer"):
        validate(make_cfg(*LENET, "model.activation=gated"))
    cfg = make_cfg(*LENET, "model.hidden=[100]")
    with pytest.raises(ConfigError, match="multiple of 16"):
        training.make_model(cfg, (28, 28, 1), 0)


@pytest.mark.slow
def test_a_short_fit_learns_and_evaluates_with_running_statistics(fmnist_small):
    from aeflax import objectives

    cfg = make_cfg(*LENET, "train.epochs=2", "train.batch_size=64", "optimizer.learning_rate=1e-3")
    result = training.fit(cfg, fmnist_small, progress=False)
    h = result.history
    assert h[-1]["train/loss"] < h[0]["train/loss"] and h[-1]["test/mse"] < 0.05
    model = result.model
    stats = {k: np.asarray(v)
             for k, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.BatchStat))}
    assert all(np.abs(v).max() > 0 for v in stats.values())  # every running statistic has moved
    x = fmnist_small.test.images[:500].astype(np.float32) / 255.0
    mse = float(jnp.mean(objectives.eval_terms(model, x, x, jax.random.key(0), cfg, {})["mse"]))
    np.testing.assert_allclose(h[-1]["test/mse"], mse, rtol=1e-4)  # evaluation used running statistics
