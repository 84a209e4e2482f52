"""The options that make the VampPrior / Exemplar VAE code's protocol expressible (the rows of
experiments/exemplar_vae): each against a NumPy reference of the authors' code, or a known value.

- optimizer.normalize_grads: their AdamNormGrad (utils/optimizer.py): g / (||g||_2 + 1e-7) per
  tensor, then Adam with the step lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps);
- train.early_stopping_from: their loop (density_estimation.py): the best is kept from epoch 1,
  the patience counter `e` is reset while epoch < warmup, the run breaks once e > patience;
- bottleneck.logvar_min / logvar_max: their hardtanh(-6, 2) on every log-variance;
- model.init=he_normal_torch: their he_init, N(0, 2 / fan_in), and PyTorch's default bias."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg
from flax import nnx

from aeflax import training
from aeflax.config import ConfigError, validate
from aeflax.models.layers import dense


def adam_norm_grad(params, grads_per_step, lr, b1=0.9, b2=0.999, eps=1e-8, optax_eps=False):
    """The authors' AdamNormGrad.step, transcribed to NumPy (float64). `optax_eps`: eps added to
    sqrt(v) / sqrt(1 - b2^t) as optax (and today's PyTorch) do, not to sqrt(v) as theirs (PyTorch 0.4's)."""
    params = [p.astype(np.float64).copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g.astype(np.float64) / (np.linalg.norm(g.ravel(), 2) + 1e-7)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            denom = np.sqrt(v[i]) + (eps * math.sqrt(1 - b2**t) if optax_eps else eps)
            params[i] = params[i] - step_size * m[i] / denom
    return params


def test_normalize_grads_is_the_authors_adam_norm_grad():
    """Their formula but for where eps enters: optax adds it to sqrt(v_hat), they to sqrt(v), which is
    eps / sqrt(1 - b2^t) on sqrt(v_hat) (3.2e-7 at step 1, 1.1e-8 at step 10,000): it changes only
    the steps of gradient entries that small, first ones, by up to 1% at step 1 here."""
    cfg = make_cfg("optimizer.normalize_grads=true", "optimizer.eps=1e-8", "optimizer.learning_rate=5e-4")
    tx = training.model_direction(cfg, steps_per_epoch=10)
    rng = np.random.default_rng(0)
    params = [rng.normal(size=(30, 20)).astype(np.float32), rng.normal(size=(20,)).astype(np.float32)]
    scales = (3.0, 1e-3)  # the normalisation makes the two alike
    grads = [[(s * rng.normal(size=p.shape)).astype(np.float32) for p, s in zip(params, scales, strict=True)]
             for _ in range(20)]
    state = tx.init([jnp.asarray(p) for p in params])
    change = [np.zeros(p.shape) for p in params]  # the 20 steps' -lr * u, summed in float64
    for g in grads:
        updates, state = tx.update([jnp.asarray(x) for x in g], state)
        change = [c - 5e-4 * np.asarray(u, np.float64) for c, u in zip(change, updates, strict=True)]
    for c, b, p in zip(change, adam_norm_grad(params, grads, 5e-4, optax_eps=True), params, strict=True):
        np.testing.assert_allclose(c, b - p, rtol=1e-4, atol=1e-8)  # float32 sums of 5e-4 steps
    for c, b, p in zip(change, adam_norm_grad(params, grads, 5e-4), params, strict=True):  # theirs exactly
        np.testing.assert_allclose(c, b - p, rtol=0.05, atol=5e-6)


def test_normalized_gradients_have_unit_norm_per_tensor():
    g = {"w": jnp.full((3, 4), 2.0), "b": jnp.array([3.0, 4.0])}
    out, _ = training.normalize_per_tensor().update(g, None)
    np.testing.assert_allclose(np.asarray(out["w"]), np.full((3, 4), 2.0 / (math.sqrt(48) + 1e-7)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["b"]), [0.6, 0.8], rtol=1e-6)


def authors_stop(losses, patience, warmup):
    """(epoch it breaks at or None, best epoch): their loop with early_stopping_epochs = patience."""
    best_loss, best, e = math.inf, None, 0
    for epoch, loss in enumerate(losses, start=1):
        if loss < best_loss:
            e, best_loss, best = 0, loss, epoch
        else:
            e += 1
            if epoch < warmup:
                e = 0
            if e > patience:
                return epoch, best
    return None, best


def run_stopper(stopper, losses, first_epoch=1):
    for epoch, loss in enumerate(losses, start=first_epoch):
        if stopper.should_stop({"val/loss": loss, "epoch": epoch}, jnp.asarray(epoch)):
            return epoch
    return None


@pytest.mark.parametrize("seed", range(20))
def test_early_stopping_from_stops_and_keeps_as_the_authors_loop(seed):
    """Their `e > 50` with `e = 0` while epoch < warmup is patience 51 counted from epoch `warmup`;
    a stopper resumed after any epoch (EarlyStopping.resume) stops and keeps the same."""
    rng = np.random.default_rng(seed)
    warmup, patience = int(rng.integers(1, 30)), int(rng.integers(1, 8))
    # a loss that falls, then wanders: improvements before, during and after the warm-up
    losses = list(np.round(100 / np.arange(1, 81) ** 0.3 + rng.normal(0, 0.5, 80), 1))
    stop, best = authors_stop(losses, patience, warmup)
    stopper = training.EarlyStopping(patience + 1, "val/loss", count_from=warmup)
    assert run_stopper(stopper, losses) == stop and stopper.best_epoch == best
    assert int(stopper.best_state) == best
    for k in range(1, stop or len(losses)):  # interrupted after epoch k
        history = [{"val/loss": loss, "epoch": i} for i, loss in enumerate(losses[:k], start=1)]
        resumed = training.EarlyStopping(patience + 1, "val/loss", k, count_from=warmup)
        resumed.resume(history, lambda epoch: jnp.asarray(epoch))
        assert run_stopper(resumed, losses[k:], first_epoch=k + 1) == stop
        assert resumed.best_epoch == best and int(resumed.best_state) == best


def test_early_stopping_from_zero_is_the_plain_patience():
    losses = [5, 4, 3, 3.5, 3.2, 3.1, 3.0, 2.0, 2.5]
    assert run_stopper(training.EarlyStopping(3, "val/loss"), losses) == 6
    assert run_stopper(training.EarlyStopping(3, "val/loss", count_from=5), losses) == 7


SMALL_HVAE = ("bottleneck.kind=hvae", "bottleneck.top_prior=vamp", "bottleneck.code_size=3",
              "bottleneck.hierarchy_hidden=16", "bottleneck.pseudo_inputs=5", "loss.name=elbo",
              "model.hidden=[32]")


@pytest.mark.parametrize("kind", ["gaussian", "vamp", "exemplar", "iaf", "planar", "hvae"])
def test_logvar_bounds_clamp_every_log_variance(kind):
    """Bounds inside the initial spread: every log-variance the bottleneck computes is the same
    model's unbounded one clipped to them."""
    over = SMALL_HVAE if kind == "hvae" else (f"bottleneck.kind={kind}", "bottleneck.code_size=3",
                                              "model.hidden=[32]", "loss.name=elbo")
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    logvars = {}
    for bounds in (("null", "null"), ("-0.005", "0.005")):
        cfg = make_cfg(*over, f"bottleneck.logvar_min={bounds[0]}", f"bottleneck.logvar_max={bounds[1]}")
        validate(cfg)
        model = training.make_model(cfg, (28, 28, 1), 0, num_train=8)
        h = model.encoder(x)
        if kind == "hvae":
            d = model.bottleneck.layers(h)  # the means: z2 does not depend on its log-variance
            z2 = d["z2"] if "z2" in d else d["code"][..., 3:]
            logvars[bounds] = [d["logvar1"], d["logvar2"], model.bottleneck.p_z1(z2)[1],
                               model.bottleneck.top.prior_stats()[1]]
        else:
            logvars[bounds] = [model.bottleneck.stats(h)[1]]
    for raw, bounded in zip(logvars[("null", "null")], logvars[("-0.005", "0.005")], strict=True):
        assert float(jnp.max(jnp.abs(raw))) > 0.005  # the bounds bind
        np.testing.assert_array_equal(np.asarray(bounded), np.clip(np.asarray(raw), np.float32(-0.005),
                                                                   np.float32(0.005)))


def test_bad_logvar_bounds_and_init_fail_with_one_line():
    bounds = ("bottleneck.kind=gaussian", "bottleneck.logvar_min=2", "bottleneck.logvar_max=-6")
    for overrides, message in ((bounds, "logvar_min=2.0 must be < bottleneck.logvar_max"),
                               (("model.init=he_uniform",), "model.init"),
                               (("model.architecture=conv", "model.init=he_normal_torch"), "conv models"),
                               (("train.early_stopping_from=-1",), "early_stopping_from")):
        with pytest.raises(ConfigError, match=message) as err:
            validate(make_cfg(*overrides))
        assert "\n" not in str(err.value)


def test_he_normal_torch_is_the_authors_he_init():
    """Kernel N(0, 2 / fan_in), not truncated; bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    layer = dense(784, 300, nnx.Rngs(0), "he_normal_torch")
    k, b = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
    assert k.shape == (784, 300) and k.std() == pytest.approx(math.sqrt(2 / 784), rel=0.01)
    assert np.abs(k).max() > 4 * k.std()  # a truncated normal stops at 2 of its sigmas
    assert np.abs(b).max() <= 1 / 28 and np.abs(b).max() > 0.9 / 28 and abs(b.mean()) < 0.005
    assert not np.asarray(dense(784, 300, nnx.Rngs(0)).bias[...]).any()  # the default keeps zero biases


def test_pytorch_init_is_an_nn_linear():
    """pythae's models keep nn.Linear's defaults: kernel and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    layer = dense(784, 512, nnx.Rngs(0), "pytorch")
    k, b = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
    assert np.abs(k).max() <= 1 / 28 and np.abs(k).max() > 0.99 / 28 and abs(k.mean()) < 0.001
    assert np.abs(b).max() <= 1 / 28 and np.abs(b).max() > 0.9 / 28


def test_warmup_per_epoch_is_the_authors_set_beta():
    """Their beta in epoch e (from 1) is min(1, e / warmup); per step (the default) it is (step + 1) /
    warmup_steps, as before the option existed."""
    from aeflax.parts.loss.elbo import kl_weight

    steps = jnp.arange(0, 1200)
    per_epoch = {"beta": jnp.float32(1), "warmup_steps": jnp.float32(1000), "warmup_stair": jnp.float32(100)}
    np.testing.assert_allclose(np.asarray(kl_weight(per_epoch, steps)),
                               np.minimum(1.0, (np.arange(1200) // 100 + 1) / 10), rtol=1e-6)
    per_step = {**per_epoch, "warmup_stair": jnp.float32(1)}
    before = jnp.minimum(1.0, (steps + 1) / jnp.maximum(per_step["warmup_steps"], 1))  # the formula before
    np.testing.assert_array_equal(np.asarray(kl_weight(per_step, steps)), np.asarray(before))
