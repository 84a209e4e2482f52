"""Typed configuration of a run, as plain dataclasses.

The library only reads these dataclasses (or OmegaConf nodes with the same fields);
Hydra registers them as structured configs in `experiments/schema.py`, so typos and
wrong types fail at the command line. `validate` checks the ranges Hydra cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    data_dir: Optional[str] = None  # default: $TFDS_DATA_DIR or ~/tensorflow_datasets
    val_size: int = 0  # examples carved from the end of train; 0 = evaluate on test
    train_limit: Optional[int] = None  # keep the first N train examples (small subsets)
    test_limit: Optional[int] = None
    normal_class: Optional[int] = None  # one-class training (anomaly detection)
    binarize: str = "none"  # none | dynamic (re-drawn each epoch) | static (once)


@dataclass
class ConvConfig:
    channels: list[int] = field(default_factory=lambda: [16, 8])
    kernel_size: int = 3
    stride: int = 2
    impl: str = "auto"  # auto | native | im2col (CPU-friendly, same numbers)


@dataclass
class ModelConfig:
    architecture: str = "dense"  # dense | conv
    hidden: list[int] = field(default_factory=list)  # dense encoder hidden sizes
    decoder_hidden: Optional[list[int]] = None  # default: reversed(hidden)
    activation: str = "relu"
    output_activation: str = "sigmoid"  # sigmoid | linear
    conv: ConvConfig = field(default_factory=ConvConfig)
    init: str = "glorot_uniform"  # Keras' default kernel init


@dataclass
class BottleneckConfig:
    kind: str = "deterministic"  # deterministic | gaussian | vq | identity
    code_size: int = 64
    activation: str = "relu"  # code activation (deterministic)
    top_k: int = 0  # k-sparse code: keep the k largest units; 0 = off
    codebook_size: int = 512  # vq
    embedding_dim: int = 8  # vq: size of each codebook vector (dense: code_size / D vectors per image)
    commitment: float = 0.25  # vq commitment weight
    ema_decay: float = 0.0  # vq: > 0 updates the codebook by EMA instead of gradients


@dataclass
class LossConfig:
    name: str = "mse"  # mse | bce | elbo | iwae
    likelihood: str = "bernoulli"  # elbo/iwae decoder: bernoulli | gaussian
    likelihood_std: float = 1.0  # gaussian decoder: fixed std of p(x|z) = N(recon, std^2 I)
    beta: float = 1.0  # weight of the KL term (beta-VAE)
    warmup_epochs: int = 0  # KL weight ramps linearly from 0 to beta
    k: int = 1  # importance samples (iwae)


@dataclass
class NoiseConfig:
    kind: str = "none"  # none | gaussian | masking | salt_pepper
    std: float = 0.0  # gaussian
    prob: float = 0.0  # masking / salt_pepper
    fixed: bool = False  # draw the noise once per image (tutorial protocol)


@dataclass
class PenaltyConfig:
    l1_activity: float = 0.0
    kl_sparsity: float = 0.0  # weight beta of KL(rho || mean activation)
    sparsity_target: float = 0.05  # rho
    contractive: float = 0.0  # lambda of ||J_f(x)||_F^2
    contractive_method: str = "auto"  # auto (closed form when possible) | autodiff | closed_form
    l1_weight: float = 0.0
    l2_weight: float = 0.0


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam | adamw | sgd
    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-7  # Keras' default
    weight_decay: float = 0.0  # decoupled (adamw)
    schedule: str = "constant"  # constant | cosine | exponential | burda (Burda et al.'s 8 stages)
    decay_rate: float = 0.1  # exponential: factor over the whole run
    grad_clip: float = 0.0  # global-norm clip; 0 = off


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    eval_batch_size: int = 1000
    checkpoint_every: int = 1  # epochs; 0 = only at the end
    early_stopping_patience: int = 0  # epochs without val improvement; 0 = off


@dataclass
class LoggerConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "aeflax"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    dir: Optional[str] = None  # where the wandb/ folder goes; null: the run dir (a multirun: the sweep dir)
    log_checkpoints: bool = False  # the checkpoints as a W&B model artifact at the end of the run


@dataclass
class EvalConfig:
    # each use is measured when asked and when it applies to the model (else skipped, with a note)
    reconstruction: bool = True  # test/ssim, test/bce_per_image beside the epoch's test metrics
    likelihood: bool = False  # VAE family: importance-sampled NLL (active units, KL per dim always)
    importance_samples: int = 1000  # k of test/nll_k<k>; up to 5000 (Burda et al.)
    importance_chunk: int = 250  # samples drawn per compiled step: bounds the memory
    likelihood_limit: Optional[int] = None  # test images for the NLL; null = all
    denoising_levels: list[float] = field(default_factory=list)  # noise levels: denoise/psnr@<level>
    denoising_kind: str = "gaussian"  # gaussian (level = std) | masking | salt_pepper (level = prob)
    probe: bool = False  # linear probe + k-NN on frozen codes (probe/accuracy, probe/knn_accuracy)
    probe_raw: bool = True  # the same probe on raw pixels beside it (probe/raw_accuracy)
    probe_limit: Optional[int] = None  # train examples the probe is fit on; null = all
    knn_k: int = 5
    anomaly: bool = False  # one-class AUROC; needs data.normal_class
    anomaly_score: str = "auto"  # recon (per-image MSE) | elbo (negative ELBO) | auto (elbo for VAEs)
    figures: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    name: str = "default"  # experiment name: groups runs in W&B and tables
    fresh: bool = False  # start over even if the run directory holds a checkpoint
    objective: str = "test/loss"  # the summary metric a run returns to a sweeper (Optuna)


class ConfigError(ValueError):
    """A configuration value outside its allowed range; the message names the fix."""


ACTIVATIONS = ("relu", "sigmoid", "tanh", "elu", "gelu", "leaky_relu", "softplus", "linear")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(value: Any, allowed: tuple, key: str) -> None:
    _check(value in allowed, f"{key}={value!r} is not known; choose one of {', '.join(map(str, allowed))}")


def validate(cfg: Any) -> None:
    """Check ranges and combinations; raise ConfigError with one clear line."""
    d, m, b, lo, n, p, o, t = (cfg.data, cfg.model, cfg.bottleneck, cfg.loss, cfg.noise,
                               cfg.penalty, cfg.optimizer, cfg.train)
    _one_of(m.architecture, ("dense", "conv"), "model.architecture")
    _one_of(m.activation, (*ACTIVATIONS, "gated"), "model.activation")
    _check(not (m.activation == "gated" and m.architecture == "conv"),
           "model.activation=gated is a dense layer; conv models take relu, elu, ...")
    _one_of(m.output_activation, ("sigmoid", "linear"), "model.output_activation")
    _one_of(m.conv.impl, ("auto", "native", "im2col"), "model.conv.impl")
    _check(all(h >= 1 for h in m.hidden), f"model.hidden={list(m.hidden)}: every size must be >= 1")
    _check(m.decoder_hidden is None or all(h >= 1 for h in m.decoder_hidden),
           f"model.decoder_hidden={m.decoder_hidden}: every size must be >= 1 (or null for reversed(hidden))")
    _one_of(m.init, ("glorot_uniform", "lecun_normal", "he_normal"), "model.init")  # layers.INITIALIZERS
    _check(len(m.conv.channels) >= 1 and all(c >= 1 for c in m.conv.channels),
           f"model.conv.channels={list(m.conv.channels)}: give at least one channel count >= 1")
    _check(m.conv.kernel_size >= 1 and m.conv.stride >= 1, "model.conv.kernel_size and stride must be >= 1")
    _one_of(b.kind, ("deterministic", "gaussian", "vq", "identity"), "bottleneck.kind")
    _one_of(b.activation, ACTIVATIONS, "bottleneck.activation")
    _check(b.code_size >= 1, f"bottleneck.code_size={b.code_size} must be >= 1 (the size of the code)")
    _check(0 <= b.top_k <= b.code_size, f"bottleneck.top_k={b.top_k} must be in [0, code_size={b.code_size}]")
    _check(b.codebook_size >= 1, f"bottleneck.codebook_size={b.codebook_size} must be >= 1")
    _check(b.commitment >= 0, f"bottleneck.commitment={b.commitment} must be >= 0")
    _check(0 <= b.ema_decay < 1, f"bottleneck.ema_decay={b.ema_decay} must be in [0, 1)")
    _one_of(lo.name, ("mse", "bce", "elbo", "iwae"), "loss.name")
    _one_of(lo.likelihood, ("bernoulli", "gaussian"), "loss.likelihood")
    _check(lo.beta >= 0, f"loss.beta={lo.beta} must be >= 0")
    _check(lo.warmup_epochs >= 0, f"loss.warmup_epochs={lo.warmup_epochs} must be >= 0")
    _check(lo.k >= 1, f"loss.k={lo.k} must be >= 1 (importance samples)")
    variational = lo.name in ("elbo", "iwae")
    _check(variational == (b.kind == "gaussian"),
           f"loss.name={lo.name} needs bottleneck=gaussian and a gaussian bottleneck needs loss=elbo or "
           f"iwae (got bottleneck.kind={b.kind}); pick a matching pair, e.g. experiment=vae")
    _check(not (b.kind == "identity" and m.architecture == "dense"),
           "bottleneck.kind=identity is for conv models (the feature map is the code); use deterministic")
    _one_of(n.kind, ("none", "gaussian", "masking", "salt_pepper"), "noise.kind")
    _check(n.std >= 0, f"noise.std={n.std} must be >= 0")
    _check(0 <= n.prob < 1, f"noise.prob={n.prob} must be in [0, 1)")
    for key in ("l1_activity", "kl_sparsity", "contractive", "l1_weight", "l2_weight"):
        _check(getattr(p, key) >= 0, f"penalty.{key}={getattr(p, key)} must be >= 0")
    _check(0 < p.sparsity_target < 1, f"penalty.sparsity_target={p.sparsity_target} must be in (0, 1)")
    _check(not (p.kl_sparsity > 0 and b.activation != "sigmoid"),
           "penalty.kl_sparsity needs a sigmoid code (bottleneck.activation=sigmoid)")
    check_variant(cfg)
    _one_of(o.name, ("adam", "adamw", "sgd"), "optimizer.name")
    _one_of(o.schedule, ("constant", "cosine", "exponential", "burda"), "optimizer.schedule")
    _check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"optimizer.b1={o.b1} and b2={o.b2} must be in [0, 1)")
    _check(o.eps > 0, f"optimizer.eps={o.eps} must be > 0")
    _check(o.decay_rate > 0, f"optimizer.decay_rate={o.decay_rate} must be > 0")
    _check(o.learning_rate > 0, f"optimizer.learning_rate={o.learning_rate} must be > 0")
    _check(o.weight_decay >= 0 and o.grad_clip >= 0, "optimizer.weight_decay and grad_clip must be >= 0")
    _check(t.epochs >= 1, f"train.epochs={t.epochs} must be >= 1")
    _check(t.batch_size >= 1, f"train.batch_size={t.batch_size} must be >= 1")
    _check(t.eval_batch_size >= 1, f"train.eval_batch_size={t.eval_batch_size} must be >= 1")
    _check(t.checkpoint_every >= 0, f"train.checkpoint_every={t.checkpoint_every} must be >= 0")
    _check(t.early_stopping_patience >= 0,
           f"train.early_stopping_patience={t.early_stopping_patience} must be >= 0")
    _check(not (t.early_stopping_patience and not d.val_size),
           "train.early_stopping_patience needs a validation split (data.val_size > 0); stopping on the "
           "test set would select the model on test data")
    _check(cfg.seed >= 0, f"seed={cfg.seed} must be >= 0")
    _check(d.val_size >= 0, f"data.val_size={d.val_size} must be >= 0")
    for key in ("train_limit", "test_limit"):
        v = getattr(d, key)
        _check(v is None or v >= 1, f"data.{key}={v} must be >= 1 (or null for all)")
    _one_of(d.binarize, ("none", "dynamic", "static"), "data.binarize")
    _one_of(cfg.logger.mode, ("offline", "online", "disabled"), "logger.mode")
    _check(cfg.eval.importance_samples >= 1,
           f"eval.importance_samples={cfg.eval.importance_samples} must be >= 1")
    _check(all(s >= 0 for s in cfg.eval.denoising_levels), "eval.denoising_levels must be >= 0")
    ev = cfg.eval
    _one_of(ev.denoising_kind, ("gaussian", "masking", "salt_pepper"), "eval.denoising_kind")
    _check(ev.denoising_kind == "gaussian" or all(s < 1 for s in ev.denoising_levels),
           f"eval.denoising_levels={list(ev.denoising_levels)} are probabilities for "
           f"{ev.denoising_kind} noise: each must be < 1")
    _one_of(ev.anomaly_score, ("auto", "recon", "elbo"), "eval.anomaly_score")
    _check(ev.importance_chunk >= 1, f"eval.importance_chunk={ev.importance_chunk} must be >= 1")
    _check(ev.knn_k >= 1, f"eval.knn_k={ev.knn_k} must be >= 1")
    for key in ("likelihood_limit", "probe_limit"):
        v = getattr(ev, key)
        _check(v is None or v >= 1, f"eval.{key}={v} must be >= 1 (or null for all)")


def check_variant(cfg: Any) -> None:
    """The variant's parts fit together (bottleneck, loss, noise, penalty); one line when not."""
    m, b, lo, n, p = cfg.model, cfg.bottleneck, cfg.loss, cfg.noise, cfg.penalty
    _check(b.embedding_dim >= 1, f"bottleneck.embedding_dim={b.embedding_dim} must be >= 1")
    _check(not (b.kind == "vq" and m.architecture == "dense" and b.code_size % b.embedding_dim),
           f"bottleneck.code_size={b.code_size} must be a multiple of bottleneck.embedding_dim="
           f"{b.embedding_dim} (a dense VQ code is code_size / embedding_dim codebook vectors)")
    _check(b.top_k == 0 or b.kind == "deterministic",
           f"bottleneck.top_k={b.top_k} (k-sparse) needs bottleneck=deterministic, not {b.kind}")
    _check(b.ema_decay == 0 or b.kind == "vq", f"bottleneck.ema_decay is for bottleneck=vq, not {b.kind}")
    _check(p.l1_activity == 0 or b.kind in ("deterministic", "identity"),
           f"penalty.l1_activity needs a deterministic or identity code, not bottleneck={b.kind}")
    _check(p.kl_sparsity == 0 or b.kind == "deterministic",
           f"penalty.kl_sparsity needs bottleneck=deterministic with activation=sigmoid, not {b.kind}")
    _one_of(p.contractive_method, ("auto", "autodiff", "closed_form"), "penalty.contractive_method")
    _check(p.contractive == 0 or b.kind != "vq",
           "penalty.contractive is undefined for bottleneck=vq (a quantized code is piecewise constant)")
    _check(p.contractive == 0 or p.contractive_method != "closed_form" or
           (m.architecture == "dense" and not m.hidden and b.kind == "deterministic"),
           "penalty.contractive_method=closed_form needs a one-layer encoder (model=dense, model.hidden=[], "
           "bottleneck=deterministic); use contractive_method=autodiff")
    _check(lo.likelihood_std > 0, f"loss.likelihood_std={lo.likelihood_std} must be > 0")
    _check(lo.name != "iwae" or (lo.beta == 1 and lo.warmup_epochs == 0),
           "loss.beta and loss.warmup_epochs weight the ELBO's KL term; the IWAE bound has none: "
           "use loss=elbo for beta-VAE or KL warm-up")
    bernoulli = lo.name == "bce" or (lo.name in ("elbo", "iwae") and lo.likelihood == "bernoulli")
    _check(not bernoulli or m.output_activation == "sigmoid",
           f"loss.name={lo.name} reads the decoder's logits as Bernoulli means: set "
           "model.output_activation=sigmoid (or loss.likelihood=gaussian)")
    _check(n.kind != "gaussian" or n.std > 0, "noise.kind=gaussian needs noise.std > 0")
    _check(n.kind not in ("masking", "salt_pepper") or n.prob > 0,
           f"noise.kind={n.kind} needs noise.prob > 0")
