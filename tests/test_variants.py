"""Every named variant composes from its variant file and learns on real data; bad pairs fail early."""

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hydra import compose, initialize_config_dir

from aeflax import data, training
from aeflax.config import ConfigError, DataConfig, validate
from aeflax.parts.bottleneck.gaussian import importance_log_weights
from experiments.schema import register

CONF = Path(__file__).resolve().parent.parent / "conf"
CONV = ["conv", "conv_vae", "conv_denoising", "vqvae"]
DENSE = ["denoising", "denoising_masking", "salt_pepper", "sparse", "sparse_kl", "k_sparse", "contractive",
         "weight_decay", "vae", "beta_vae", "vae_binarized", "iwae", "vamp", "vae_planar", "vae_iaf", "rae",
         "wae", "info_vae", "beta_tcvae", "dip_vae", "dip_vae_ii", "factor_vae",
         "hvae", "hvae_vamp", "rae_gp", "exemplar_vae"]
# make test-fast trains two dense variants (an activity and a Jacobian penalty); the rest are slow
SLOW = set(DENSE + CONV) - {"sparse", "contractive"}

register()

# a few epochs on a few images: compiling costs far more than running, so compile quickly
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=["logger=disabled", *overrides])


def _init(cfg, steps: int, compile: bool = True, num_train: int = 0):
    """training.init_state as one compiled program (eagerly it dispatches op by op: seconds under load).

    With compile=False the state is abstract (shapes only), for tracing.
    """
    abstract = nnx.eval_shape(lambda: training.make_model(cfg, (28, 28, 1), cfg.seed, num_train))
    graphdef = nnx.split(abstract, nnx.Param, ...)[0]
    init = lambda: training.init_state(cfg, (28, 28, 1), steps, num_train=num_train)[1]
    return graphdef, jax.jit(init, compiler_options=FAST_COMPILE)() if compile else jax.eval_shape(init)


@functools.cache
def trained(name: str):
    """(cfg, graphdef, state, train metrics per epoch, data) after 3 short epochs, once per session.

    Compiling dominates here, so one compiled epoch serves it all: 800 real images (600 for the
    conv variants, whose XLA CPU convolutions are slow), batch 32, and the loss that falls is the
    mean training loss of the last epoch against the first (which starts from the initial weights).
    """
    cfg = _compose(f"variant={name}", "train.batch_size=32")
    validate(cfg)
    dataset = data.load(DataConfig(train_limit=600 if name in CONV else 800, test_limit=200,
                                   binarize=cfg.data.binarize))
    n = len(dataset.train)
    steps = training.steps_per_epoch(n, cfg.train.batch_size)
    graphdef, state = _init(cfg, steps, num_train=n)
    hp = training.hyperparameters(cfg, steps)
    train_epoch = jax.jit(training.make_train_epoch(graphdef, cfg, n), compiler_options=FAST_COMPILE)
    history = []
    for _ in range(3):
        state, metrics = train_epoch(state, dataset.train.images, hp)
        history.append({k: float(v) for k, v in metrics.items()})
    return cfg, graphdef, state, history, dataset


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in DENSE + CONV])
def test_variant_composes_and_its_loss_falls(name):
    cfg, _, _, history, _ = trained(name)
    assert cfg.name == name
    first, last = history[0], history[-1]
    assert all(np.isfinite(v) for v in last.values()), last
    assert last["train/loss"] < 0.9 * first["train/loss"], [h["train/loss"] for h in history]
    assert last["train/mse"] < first["train/mse"]
    if cfg.bottleneck.kind == "vq":
        assert 1 < last["train/perplexity"] <= cfg.bottleneck.codebook_size
        assert 0 < last["train/codebook_usage"] <= 1 and last["train/commitment_loss"] > 0
    if cfg.bottleneck.kind in ("gaussian", "hvae", "exemplar"):
        assert last["train/elbo"] == pytest.approx(-last["train/recon_nll"] - last["train/kl"], rel=1e-5)
    if cfg.bottleneck.kind == "hvae":  # both layers carry information
        assert last["train/kl"] == pytest.approx(last["train/kl_z1"] + last["train/kl_z2"], rel=1e-5)
        assert last["train/kl_z1"] > 0 and last["train/kl_z2"] > 0
    if cfg.penalty.decoder_gradient:
        assert last["train/decoder_gradient"] > 0
    if cfg.loss.name == "iwae":
        assert last["train/iwae"] > last["train/elbo"]  # the k = 5 bound is tighter
    if cfg.bottleneck.top_k:
        assert last["train/active_fraction"] == pytest.approx(cfg.bottleneck.top_k / cfg.bottleneck.code_size)
    if cfg.penalty.kl_sparsity:  # sigmoid units pulled from 0.5 towards rho = 0.05
        assert last["train/mean_activation"] < 0.45
    if cfg.penalty.contractive:
        assert 0 < last["train/contractive"] < first["train/contractive"]
    if cfg.penalty.factor_gamma:  # the discriminator learns to tell codes from permuted codes
        assert last["train/factor_disc_loss"] < math.log(2) and last["train/factor_disc_accuracy"] > 0.6


@pytest.mark.slow  # trains the VAE
def test_iwae_bound_tightens_with_k_on_a_trained_vae():
    cfg, graphdef, state, _, dataset = trained("vae")
    x = dataset.test.images[:200].astype(np.float32) / 255.0

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def log_weights(state):
        model = training.merge(graphdef, state)
        return importance_log_weights(model, x, jax.random.key(7), 50, "bernoulli")

    log_w = log_weights(state)  # [50, B]: the bound for k uses the first k draws
    bound = lambda k: float(jnp.mean(jax.nn.logsumexp(log_w[:k], axis=0) - math.log(k)))
    b1, b5, b50 = bound(1), bound(5), bound(50)
    assert b1 < b5 < b50, (b1, b5, b50)
    assert b50 - b1 > 1.0  # nats: a real gap, not rounding


def test_the_tutorial_conv_denoising_protocol():
    cfg = _compose("variant=conv_denoising")
    assert (cfg.model.architecture, cfg.bottleneck.kind, cfg.loss.name) == ("conv", "identity", "mse")
    assert (cfg.noise.kind, cfg.noise.std, cfg.noise.fixed) == ("gaussian", 0.2, True)
    assert (cfg.train.batch_size, cfg.train.epochs, list(cfg.model.conv.channels)) == (32, 10, [16, 8])


BAD = [
    (["bottleneck=gaussian"], "needs bottleneck=[a-z ]*gaussian"),
    (["loss=elbo"], "needs bottleneck=[a-z ]*gaussian"),
    (["experiment=vae", "loss=iwae", "loss.beta=4"], "IWAE bound has none"),
    (["penalty=kl_sparse"], "sigmoid"),
    (["experiment=vae", "penalty=l1"], "deterministic or identity"),
    (["experiment=vqvae", "penalty=contractive"], "bottleneck=vq"),
    (["bottleneck=vq", "bottleneck.embedding_dim=5"], "multiple of"),
    (["experiment=vae", "bottleneck.top_k=3"], "k-sparse"),
    (["bottleneck.ema_decay=0.9"], "for bottleneck=vq"),
    (["experiment=contractive", "model=mlp", "penalty.contractive_method=closed_form"], "one-layer"),
    (["loss=bce", "model.output_activation=linear"], "output_activation=sigmoid"),
    (["noise=gaussian", "noise.std=0"], "noise.std > 0"),
    (["noise=masking", "noise.prob=0"], "noise.prob > 0"),
    (["model=dense", "bottleneck=identity"], "conv models"),
    (["experiment=vae", "loss.likelihood=gaussian", "loss.likelihood_std=0"], "likelihood_std"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_combination_that_makes_no_sense_fails_with_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate(_compose(*overrides))
    assert "\n" not in str(err.value)


GOOD = [
    ["model=conv", "bottleneck=gaussian", "loss=elbo_gaussian", "noise=salt_pepper"],
    ["model=conv", "bottleneck=vq_ema"],
    ["model=mlp", "bottleneck=vq", "penalty=weight_l1"],
    ["model=conv", "bottleneck=identity", "penalty=l1", "noise=masking"],
    ["model=mlp", "bottleneck=sigmoid", "penalty=contractive", "noise=gaussian"],
    ["experiment=vae", "loss.warmup_epochs=5", "data.binarize=static", "penalty=weight_l2"],
    ["experiment=k_sparse", "noise=gaussian", "optimizer=adamw"],
    ["experiment=vae", "penalty=contractive", "noise=masking"],
    ["variant=factor_vae", "bottleneck=vamp", "penalty.l2_weight=0.001", "optimizer=adamw"],
    ["model=mlp", "bottleneck=hvae", "bottleneck.top_prior=vamp", "loss=iwae"],
    ["model=conv", "bottleneck=hvae", "loss=elbo", "penalty.decoder_gradient=0.1"],
]


@pytest.mark.parametrize("overrides", GOOD, ids=[" ".join(o) for o in GOOD])
def test_combinations_that_make_sense_validate_and_trace(overrides):
    cfg = _compose(*overrides)
    validate(cfg)
    graphdef, state = _init(cfg, 1, compile=False)
    images = jax.ShapeDtypeStruct((64, 28, 28, 1), jnp.uint8)
    epoch = training.make_train_epoch(graphdef, cfg, 64)  # traced (shapes, gradients), not compiled
    _, metrics = jax.eval_shape(epoch, state, images, training.hyperparameters(cfg, 1))
    assert metrics["train/loss"].shape == ()


@pytest.mark.parametrize("bottleneck", ["deterministic", "gaussian", "vq", "identity"])
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_conv_models_take_every_bottleneck_and_image_shape(bottleneck, shape):
    loss = "elbo" if bottleneck == "gaussian" else "mse"
    cfg = _compose("model=conv", f"bottleneck={bottleneck}", f"loss={loss}")
    validate(cfg)
    model = nnx.eval_shape(lambda: training.make_model(cfg, shape, 0))  # shapes only: nothing compiled
    out = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, *shape), jnp.float32))
    assert out["recon"].shape == (2, *shape)
