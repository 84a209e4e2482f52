"""Typed configuration of a run, as plain dataclasses.

The library only reads these dataclasses (or OmegaConf nodes with the same fields);
Hydra registers them as structured configs in `experiments/schema.py`, so typos and
wrong types fail at the command line. The sections of the parts (bottleneck, loss, noise,
penalty, eval) are assembled from the fields each part declares (aeflax.parts); the
others are declared here. `validate` checks the ranges Hydra cannot.

What a field does to a run is its metadata (aeflax.parts: numbers, evaluation, record):
`settings` derives from it the options that decide a run's numbers (the resume check,
vmap grouping and sweep directory names read the same function).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Optional

from aeflax import parts
from aeflax.checks import ConfigError, check, one_of
from aeflax.flat import flatten
from aeflax.models.layers import INITIALIZERS, TORCH_BIAS
from aeflax.parts import EVALUATION, NUMBERS, RECORD, record, traced


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    data_dir: Optional[str] = record(None)  # default: $TFDS_DATA_DIR or ~/tensorflow_datasets
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
    architecture: str = "dense"  # dense | conv | lenet (Ruff et al.'s conv AE with batch norm)
    hidden: list[int] = field(default_factory=list)  # dense encoder hidden sizes (lenet: its one dense layer)
    decoder_hidden: Optional[list[int]] = None  # default: reversed(hidden)
    activation: str = "relu"
    output_activation: str = "sigmoid"  # sigmoid | linear
    conv: ConvConfig = field(default_factory=ConvConfig)
    init: str = "glorot_uniform"  # Keras' default kernel init


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam | adamw | sgd
    learning_rate: float = traced(1e-3)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-7  # Keras' default
    weight_decay: float = traced(0.0)  # decoupled (adamw)
    schedule: str = "constant"  # constant | cosine | exponential | burda (Burda et al.'s 8 stages) | step
    decay_rate: float = 0.1  # exponential: factor over the whole run; step: factor at each milestone
    milestones: list[int] = field(default_factory=list)  # step: epochs after which the rate is scaled
    grad_clip: float = 0.0  # global-norm clip; 0 = off
    normalize_grads: bool = False  # each tensor's gradient over its L2 norm first (their AdamNormGrad)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 256
    eval_batch_size: int = 1000
    checkpoint_every: int = record(1)  # epochs; 0 = only at the end
    # the per-epoch evaluation of the eval split: every N epochs and after the last (0: after the last
    # only); it changes no number, and saves its cost where nothing reads the curve (early stopping: 1)
    eval_every: int = record(1)
    early_stopping_patience: int = 0  # epochs without val improvement; 0 = off
    early_stopping_from: int = 0  # the first epoch the patience counts (the KL warm-up's before it do not)


@dataclass
class LoggerConfig:
    mode: str = record("offline")  # offline | online | disabled
    project: str = record("aeflax")
    entity: Optional[str] = record(None)
    group: Optional[str] = record(None)
    tags: list[str] = record(default_factory=list)
    job_type: str = record("train")
    dir: Optional[str] = record(None)  # parent of the wandb/ folder; null: the run dir (multirun: sweep's)
    log_checkpoints: bool = record(False)  # the checkpoints as a W&B model artifact at the end of the run


BottleneckConfig = parts.axis_config("bottleneck", "BottleneckConfig")
LossConfig = parts.axis_config("loss", "LossConfig")
NoiseConfig = parts.axis_config("noise", "NoiseConfig")
PenaltyConfig = parts.axis_config("penalty", "PenaltyConfig")
EvalConfig = parts.axis_config("eval", "EvalConfig")


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
    name: str = record("default")  # experiment name: groups runs in W&B and tables
    fresh: bool = record(False)  # start over even if the run directory holds a checkpoint
    objective: str = record("test/loss")  # the summary metric a run returns to a sweeper (Optuna)


ACTIVATIONS = ("relu", "sigmoid", "tanh", "elu", "gelu", "leaky_relu", "softplus", "linear")
SECTION_ROLES = {"eval": EVALUATION}  # the role of a section's fields unless a field says otherwise


def validate(cfg: Any) -> None:
    """Check ranges and combinations; raise ConfigError with one clear line."""
    d, m, o, t = cfg.data, cfg.model, cfg.optimizer, cfg.train
    one_of(m.architecture, ("dense", "conv", "lenet"), "model.architecture")
    one_of(m.activation, (*ACTIVATIONS, "gated"), "model.activation")
    check(not (m.activation == "gated" and m.architecture != "dense"),
          f"model.activation=gated is a dense layer; {m.architecture} models take relu, elu, ...")
    check(m.architecture != "lenet" or len(m.hidden) == 1,
          f"model.architecture=lenet has one dense layer: give model.hidden=[<width>], not {list(m.hidden)}")
    one_of(m.output_activation, ("sigmoid", "linear"), "model.output_activation")
    one_of(m.conv.impl, ("auto", "native", "im2col"), "model.conv.impl")
    check(all(h >= 1 for h in m.hidden), f"model.hidden={list(m.hidden)}: every size must be >= 1")
    check(m.decoder_hidden is None or all(h >= 1 for h in m.decoder_hidden),
          f"model.decoder_hidden={m.decoder_hidden}: every size must be >= 1 (or null for reversed(hidden))")
    one_of(m.init, tuple(INITIALIZERS), "model.init")
    check(not (m.init in TORCH_BIAS and m.architecture == "conv"),
          f"model.init={m.init} gives dense layers PyTorch's biases; conv models take he_normal or "
          "pytorch_uniform")
    check(len(m.conv.channels) >= 1 and all(c >= 1 for c in m.conv.channels),
          f"model.conv.channels={list(m.conv.channels)}: give at least one channel count >= 1")
    check(m.conv.kernel_size >= 1 and m.conv.stride >= 1, "model.conv.kernel_size and stride must be >= 1")
    parts.validate(cfg)
    lo = parts.loss_of(cfg)
    check(not lo.bernoulli(cfg) or m.output_activation == "sigmoid",
          f"loss.name={lo.name} reads the decoder's logits as Bernoulli means: set "
          "model.output_activation=sigmoid (or loss.likelihood=gaussian)")
    one_of(o.name, ("adam", "adamw", "sgd"), "optimizer.name")
    one_of(o.schedule, ("constant", "cosine", "exponential", "burda", "step"), "optimizer.schedule")
    check((o.schedule == "step") == bool(o.milestones),
          f"optimizer.milestones={list(o.milestones)} goes with optimizer.schedule=step (and step needs "
          f"milestones), not schedule={o.schedule}")
    check(list(o.milestones) == sorted(set(o.milestones)) and all(e >= 1 for e in o.milestones),
          f"optimizer.milestones={list(o.milestones)} must be increasing epochs >= 1")
    check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"optimizer.b1={o.b1} and b2={o.b2} must be in [0, 1)")
    check(o.eps > 0, f"optimizer.eps={o.eps} must be > 0")
    check(o.decay_rate > 0, f"optimizer.decay_rate={o.decay_rate} must be > 0")
    check(o.learning_rate > 0, f"optimizer.learning_rate={o.learning_rate} must be > 0")
    check(o.weight_decay >= 0 and o.grad_clip >= 0, "optimizer.weight_decay and grad_clip must be >= 0")
    check(t.epochs >= 1, f"train.epochs={t.epochs} must be >= 1")
    check(t.batch_size >= 1, f"train.batch_size={t.batch_size} must be >= 1")
    check(t.eval_batch_size >= 1, f"train.eval_batch_size={t.eval_batch_size} must be >= 1")
    check(t.checkpoint_every >= 0, f"train.checkpoint_every={t.checkpoint_every} must be >= 0")
    check(t.eval_every >= 0, f"train.eval_every={t.eval_every} must be >= 0")
    check(not (t.early_stopping_patience and t.eval_every != 1),
          f"train.eval_every={t.eval_every}: early stopping reads the validation loss after every epoch "
          "(train.eval_every=1)")
    check(t.early_stopping_patience >= 0,
          f"train.early_stopping_patience={t.early_stopping_patience} must be >= 0")
    check(t.early_stopping_from >= 0, f"train.early_stopping_from={t.early_stopping_from} must be >= 0")
    check(not (t.early_stopping_patience and not d.val_size),
          "train.early_stopping_patience needs a validation split (data.val_size > 0); stopping on the "
          "test set would select the model on test data")
    check(cfg.seed >= 0, f"seed={cfg.seed} must be >= 0")
    check(d.val_size >= 0, f"data.val_size={d.val_size} must be >= 0")
    for key in ("train_limit", "test_limit"):
        v = getattr(d, key)
        check(v is None or v >= 1, f"data.{key}={v} must be >= 1 (or null for all)")
    one_of(d.binarize, ("none", "dynamic", "static"), "data.binarize")
    one_of(cfg.logger.mode, ("offline", "online", "disabled"), "logger.mode")


# --- what each option does to a run, from the fields' metadata --------------------------

def _leaves(cls: type, prefix: str = "", section_role: str = NUMBERS):
    """(dotted name, field, role) of every leaf field under the dataclass `cls`."""
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        role = parts.role_of(f, SECTION_ROLES.get(name, section_role))
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            yield from _leaves(sub, f"{name}.", role)
        else:
            yield name, f, role


@functools.cache
def roles() -> dict[str, str]:
    """{dotted field: numbers | evaluation | record} for every leaf field of the config."""
    return {name: role for name, _, role in _leaves(Config)}


@functools.cache
def traced_fields() -> tuple[str, ...]:
    """Dotted names of the fields a compiled epoch reads as traced values (what a vmapped sweep varies)."""
    return tuple(name for name, f, _ in _leaves(Config) if parts.hp_name(f))


def as_dict(cfg: Any) -> dict:
    """A config (dataclass or OmegaConf node) as plain nested dicts and lists, interpolations resolved."""
    from omegaconf import OmegaConf

    node = cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg)
    return OmegaConf.to_container(node, resolve=True)


def settings(cfg: Any, role: str = NUMBERS) -> dict:
    """The options that decide a run's numbers, flat: {"train.epochs": 10, ...} (keys not in the
    schema, such as hydra's, never do)."""
    known = roles()
    return {k: v for k, v in flatten(as_dict(cfg)).items() if known.get(k) == role}


def unnamed_keys() -> list[str]:
    """Override keys that do not name a sweep job's directory: the record fields, and the groups
    made only of them (logger=...)."""
    fields = roles()
    keys = [k for k, r in fields.items() if r == RECORD]
    sections = {k.split(".")[0] for k in fields if "." in k}
    keys += [s for s in sorted(sections)
             if all(r == RECORD for k, r in fields.items() if k.startswith(f"{s}."))]
    return keys


__all__ = ["Config", "ConfigError", "flatten", "settings", "traced_fields", "validate"]
