"""Training: the state, a jit-compiled step, a whole epoch as one `lax.scan`.

The state is a plain pytree (`TrainState`): parameters, other model variables, optimizer
state, PRNG key and counters. Scalar hyperparameters (learning rate, noise level,
penalty weights, beta) travel in a separate dict `hp` of arrays rather than being baked
into the program, so a sweep over them can `jax.vmap` one compiled epoch.

The data order of epoch e is a permutation drawn from fold_in(key, e): it depends only
on the seed and the epoch, so resuming from a checkpoint replays the same batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from aeflax import objectives, parallel, parts, programs
from aeflax.models import OWNED, Autoencoder, build

Metrics = dict[str, float]


# fold_in constants that name independent random streams; steps and epochs stay below them
PERMUTATION_STREAM, NOISE_STREAM, EVAL_STREAM = 2**30, 2**30 + 1, 2**30 + 2


@struct.dataclass
class TrainState:
    params: Any  # nnx.State of the nnx.Param variables
    other: Any  # nnx.State of every other variable (e.g. an EMA codebook)
    opt_state: Any
    key: jax.Array  # raw uint32 key data, so it checkpoints as a plain array
    step: jax.Array
    epoch: jax.Array


# --- building --------------------------------------------------------------------------

MODEL = "model"  # the optimizer's label of the autoencoder's parameters (a part's own: the part's name)


def owning_parts(cfg) -> list:
    """The active parts that train a module of their own (parts.Penalty.owns_module)."""
    return [p for p in parts.active(cfg, "penalty") if p.owns_module]


def make_model(cfg, image_shape, seed, num_train: int = 0) -> Autoencoder:
    """The autoencoder, its parameters drawn from `seed` (an int or a JAX key), then the modules
    its parts own under `model.owned` (built after it, so the autoencoder's initial values are
    those of the same config without them). `num_train`: the training split's size, for a model
    that keeps its images' codes (bottleneck=exemplar)."""
    rngs = nnx.Rngs(params=seed)
    model = build(cfg.model, cfg.bottleneck, tuple(image_shape), rngs, num_train)
    owners = owning_parts(cfg)
    if owners:
        setattr(model, OWNED, nnx.Dict({p.name: p.module(cfg, rngs) for p in owners}))
    return model


def param_labels(params):
    """Each parameter's optimizer: the owning part's name under `owned`, else MODEL."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[1].key if path[0].key == OWNED else MODEL,
                                            params)


def make_optimizer(cfg, steps_per_epoch: int) -> optax.GradientTransformation:
    """The model's optimizer (`model_direction`); with parts that own a module, each such module's
    parameters get that part's optimizer instead (optax.multi_transform over `param_labels`).
    Without them the optimizer and its state are the model's alone, as before there were any."""
    tx = model_direction(cfg, steps_per_epoch)
    owners = owning_parts(cfg)
    if not owners:
        return tx
    return optax.multi_transform({MODEL: tx, **{p.name: p.optimizer(cfg) for p in owners}}, param_labels)


def apply_updates(params, updates, hp, owned: bool):
    """The model's parameters take -lr (u + wd p) with the traced learning rate and decoupled weight
    decay; a part's own parameters (`owned`: there are some) take their optimizer's update as it is."""
    def model_step(p, u):
        return p - hp["learning_rate"] * (u + hp["weight_decay"] * p)

    if not owned:
        return jax.tree.map(model_step, params, updates)
    return jax.tree.map(lambda p, u, label: model_step(p, u) if label == MODEL else p + u,
                        params, updates, param_labels(params))


def model_direction(cfg, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optimizer's direction with unit learning rate; the step scales it by hp['learning_rate'].

    Keeping the learning rate (and decoupled weight decay) out of the optax chain makes them
    traced values a sweep can vmap over; the schedule is a unit-scale multiplier here.
    """
    o = cfg.optimizer
    total = max(1, cfg.train.epochs * steps_per_epoch)
    parts = [normalize_per_tensor()] if o.normalize_grads else []
    if o.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip))
    if o.name in ("adam", "adamw"):
        parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    if o.schedule == "cosine":
        parts.append(optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, total)))
    elif o.schedule == "exponential":
        parts.append(optax.scale_by_schedule(optax.exponential_decay(1.0, total, o.decay_rate)))
    elif o.schedule == "burda":
        parts.append(optax.scale_by_schedule(burda_schedule(steps_per_epoch)))
    elif o.schedule == "step":  # torch's MultiStepLR: times decay_rate after each milestone epoch
        boundaries = {e * steps_per_epoch: o.decay_rate for e in o.milestones}
        parts.append(optax.scale_by_schedule(optax.piecewise_constant_schedule(1.0, boundaries)))
    return optax.chain(*parts) if parts else optax.identity()


def normalize_per_tensor(eps: float = 1e-7) -> optax.GradientTransformation:
    """Each parameter tensor's gradient divided by (its L2 norm + eps), as the VampPrior and Exemplar
    VAE code's AdamNormGrad does before its Adam update (their utils/optimizer.py)."""
    def normalize(updates, params=None):
        return jax.tree.map(lambda g: g / (jnp.sqrt(jnp.sum(g * g)) + eps), updates)

    return optax.stateless(normalize)


def burda_schedule(steps_per_epoch: int, stages: int = 8):
    """Burda et al. 2015: stage i (i = 0..7) runs 3^i epochs at 10^(-i/7) times the learning rate."""
    boundaries, epoch = {}, 0
    for i in range(stages - 1):
        epoch += 3**i
        boundaries[epoch * steps_per_epoch] = 10 ** (-1 / 7)
    return optax.piecewise_constant_schedule(1.0, boundaries)


def hyperparameters(cfg, steps_per_epoch: int) -> dict[str, jax.Array]:
    """The scalar hyperparameters a compiled epoch reads, as float32 arrays: the optimizer's
    traced fields and those of every part the config switches on (aeflax.parts)."""
    from aeflax.config import OptimizerConfig  # the config imports the parts, which import this module

    values = parts.traced_values(OptimizerConfig, cfg.optimizer)
    values.update(parts.hyperparameters(cfg, steps_per_epoch))
    return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}


def init_state(cfg, image_shape, steps_per_epoch: int, seed: Optional[int] = None, num_train: int = 0):
    """A fresh (graphdef, TrainState) for the config; `seed` defaults to cfg.seed, `num_train` as
    make_model's."""
    seed = cfg.seed if seed is None else seed
    graphdef, create = _initializer(cfg, tuple(image_shape), steps_per_epoch, num_train)
    return graphdef, create(np.uint32(seed % 2**32))  # JAX keys hold a seed's low 32 bits


def _initializer(cfg, image_shape, steps_per_epoch: int, num_train: int = 0):
    """(graphdef, create(seed) -> TrainState): the whole new state in one compiled program, the
    seed its argument, so a sweep's seeds share one compilation (programs.shared). Op by op, the
    seed AE's initialisers took 0.8 s of start-up (each op compiled on its own); same values."""
    abstract = nnx.eval_shape(lambda: make_model(cfg, image_shape, 0, num_train))
    graphdef, _, _ = nnx.split(abstract, nnx.Param, ...)

    def build():
        tx = make_optimizer(cfg, steps_per_epoch)

        def create(seed):
            model = make_model(cfg, image_shape, jax.random.key(seed), num_train)
            _, params, other = nnx.split(model, nnx.Param, ...)
            return TrainState(params=params, other=other, opt_state=tx.init(params),
                              key=jax.random.key_data(jax.random.key(seed + 1)),
                              step=jnp.zeros((), jnp.int32), epoch=jnp.zeros((), jnp.int32))

        return create

    return graphdef, programs.shared("init_state", cfg, graphdef, build, image_shape, steps_per_epoch,
                                     num_train)


def _initial_variables(cfg, image_shape, seed: int, num_train: int = 0):
    """(graphdef, params, other) of a new model, as init_state makes them."""
    graphdef, state = init_state(cfg, image_shape, 1, seed, num_train)
    return graphdef, state.params, state.other


def merge(graphdef, state: TrainState) -> Autoencoder:
    return nnx.merge(graphdef, state.params, state.other)


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Full batches per epoch (the remainder is dropped; a new permutation each epoch)."""
    return max(1, num_train // batch_size)


# --- the compiled epoch ----------------------------------------------------------------

def prepare_batch(images, idx, key, hp, cfg, base_noise_key):
    """uint8 images at `idx` -> (encoder input, clean target), both float in [0, 1]."""
    x = images[idx].astype(jnp.float32) / 255.0
    k_bin, k_noise = jax.random.split(key)
    if cfg.data.binarize == "dynamic":
        x = jax.random.bernoulli(k_bin, x).astype(jnp.float32)
    noise = parts.noise_of(cfg)
    if noise.level is None:
        return x, x
    if cfg.noise.fixed:  # the same noise for an image every epoch (noise drawn once)
        keys = jax.vmap(lambda i: jax.random.fold_in(base_noise_key, i))(idx)
    else:
        keys = jax.random.split(k_noise, x.shape[0])
    return noise.corrupt_batch(keys, x, hp), x


def make_train_epoch(graphdef, cfg, num_train: int, batch_sharding=None) -> Callable:
    """`train_epoch(state, images, hp) -> (state, metrics)`: one epoch as one lax.scan.

    Not jitted here, so callers can wrap it in jit, vmap or shard it. With
    `batch_sharding` (see aeflax.parallel) every batch is split across devices.
    """
    batch_size = min(cfg.train.batch_size, num_train)
    n_steps = steps_per_epoch(num_train, batch_size)
    tx = make_optimizer(cfg, n_steps)
    owned = bool(owning_parts(cfg))
    bottleneck = parts.bottleneck_of(cfg)

    def loss_fn(params, other, x_in, x, key, hp, step, images, idx):
        model = nnx.merge(graphdef, params, other, copy=True)  # fresh variables: EMA updates under grad
        loss, metrics = objectives.loss_and_metrics(model, x_in, x, key, hp, cfg, train=True, step=step,
                                                    images=images, idx=idx)
        return loss, (metrics, nnx.state(model, nnx.Not(nnx.Param)))

    def refresh(state, images):
        """The bottleneck's `refresh` from the whole training split (the Exemplar prior's codes)."""
        model = nnx.merge(graphdef, state.params, state.other)
        bottleneck.refresh(model, images)
        return state.replace(other=nnx.state(model, nnx.Not(nnx.Param)))

    def train_step(carry, idx, images, hp, epoch_key):
        state = carry
        key = jax.random.fold_in(epoch_key, state.step)
        k_batch, k_loss = jax.random.split(key)
        base_noise_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), NOISE_STREAM)
        x_in, x = prepare_batch(images, idx, k_batch, hp, cfg, base_noise_key)
        if batch_sharding is not None:
            x_in, x = (jax.lax.with_sharding_constraint(a, batch_sharding) for a in (x_in, x))
        grads, (metrics, other) = jax.grad(loss_fn, has_aux=True)(
            state.params, state.other, x_in, x, k_loss, hp, state.step, images, idx)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = apply_updates(state.params, updates, hp, owned)
        state = state.replace(params=params, other=other, opt_state=opt_state, step=state.step + 1)
        return state, metrics

    def train_epoch(state: TrainState, images, hp):
        if bottleneck.exemplars:  # a new model has no codes of its exemplars yet
            state = jax.lax.cond(state.epoch == 0, lambda s: refresh(s, images), lambda s: s, state)
        epoch_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.epoch)
        perm = jax.random.permutation(jax.random.fold_in(epoch_key, PERMUTATION_STREAM), num_train)
        batches = perm[: n_steps * batch_size].reshape(n_steps, batch_size)
        # the data, hp and key are closed over, not carried: a carried array is copied each step
        step = lambda st, idx: train_step(st, idx, images, hp, epoch_key)  # noqa: E731
        state, metrics = jax.lax.scan(step, state, batches)
        state = state.replace(epoch=state.epoch + 1)
        if bottleneck.exemplars:  # the epoch's final encoder: for evaluation, checkpoints, the next epoch
            state = refresh(state, images)
        return state, {f"train/{k}": jnp.mean(v) for k, v in metrics.items()}

    return train_epoch


def make_evaluate(graphdef, cfg, num_eval: int, prefix: str) -> Callable:
    """`evaluate(state, images, hp) -> metrics`: per-image terms averaged over a split.

    The split is scanned in fixed-size batches; the tail batch is padded and masked, so
    every image counts once. Noise for denoising models is drawn once per image.
    """
    bs = min(cfg.train.eval_batch_size, num_eval)
    n_batches = math.ceil(num_eval / bs)

    def evaluate(state: TrainState, images, hp):
        model = nnx.merge(graphdef, state.params, state.other)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), EVAL_STREAM)

        def one(total, b):
            idx = b * bs + jnp.arange(bs)
            valid = idx < num_eval
            idx = jnp.where(valid, idx, 0)
            x = images[idx].astype(jnp.float32) / 255.0
            if cfg.data.binarize == "dynamic":  # evaluation data binarized once (fixed key)
                bkeys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
                x = jax.vmap(lambda k, xi: jax.random.bernoulli(k, xi))(bkeys, x).astype(jnp.float32)
            nkeys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, NOISE_STREAM), i))(idx)
            x_in = parts.noise_of(cfg).corrupt_batch(nkeys, x, hp)
            terms = objectives.eval_terms(model, x_in, x, jax.random.fold_in(key, b), cfg, hp)
            w = valid.astype(jnp.float32)
            return jax.tree.map(lambda t, v: t + jnp.sum(v * w), total, terms), None

        shapes = jax.eval_shape(lambda: objectives.eval_terms(
            model, images[:bs].astype(jnp.float32), images[:bs].astype(jnp.float32), key, cfg, hp))
        zero = {k: jnp.zeros((), jnp.float32) for k in shapes}
        total, _ = jax.lax.scan(one, zero, jnp.arange(n_batches))
        return {f"{prefix}/{k}": v / num_eval for k, v in total.items()}

    return evaluate


def compiled_train_epoch(graphdef, cfg, num_train: int, batch_sharding=None) -> Callable:
    """make_train_epoch jitted (the state donated); runs of one program (a sweep's seeds and traced
    values) share it (aeflax.programs), so it compiles once per process."""
    return programs.shared("train_epoch", cfg, graphdef,
                           lambda: make_train_epoch(graphdef, cfg, num_train, batch_sharding),
                           num_train, batch_sharding, donate_argnums=0)


def compiled_evaluate(graphdef, cfg, num_eval: int, prefix: str) -> Callable:
    """make_evaluate jitted, shared as compiled_train_epoch is."""
    return programs.shared("evaluate", cfg, graphdef, lambda: make_evaluate(graphdef, cfg, num_eval, prefix),
                           num_eval, prefix)


# --- the loop --------------------------------------------------------------------------

class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or Inf; the message names the epoch and metric and hints at a fix."""


@dataclass
class FitResult:
    graphdef: Any
    state: TrainState
    history: list[Metrics]

    @property
    def model(self) -> Autoencoder:
        return merge(self.graphdef, self.state)


def fit(cfg, dataset, *, state: Optional[TrainState] = None, graphdef=None,
        on_epoch: Optional[Callable[[int, Metrics, Optional[TrainState]], None]] = None,
        progress: bool = True, trained: Optional[Trained] = None,
        stop: Optional[Callable[[], bool]] = None, stopper: Optional[EarlyStopping] = None) -> FitResult:
    """Train for cfg.train.epochs (continuing from `state` if given), evaluating each epoch.

    `on_epoch(epoch, metrics, state)` is called after every epoch (logging, checkpoints).
    With cfg.train.early_stopping_patience > 0, training stops once the validation loss has
    not improved for that many epochs and the result holds the best epoch's state.
    `trained`: this run's result from a vmapped sweep group (vmap_sweep.train_group); a run
    that starts fresh replays it instead of training (a resumed one trains on by itself).
    `stop()`, asked before each epoch, ends training early when true (a signal: aeflax.run).
    `stopper`: the early stopping to continue (a resumed run's, see EarlyStopping.resume); it
    has seen the epoch when `on_epoch` is called, so a checkpoint can save its best state.
    Raises NonFiniteLoss when a training or evaluation metric is not finite.
    """
    if trained is not None and (state is None or int(state.epoch) == 0):
        return _replay(trained, on_epoch)
    batch_size = min(cfg.train.batch_size, len(dataset.train))
    mesh = parallel.data_mesh(batch_size)  # None on one device
    train_images = parallel.replicate(dataset.train.images, mesh)
    eval_name, eval_split = dataset.eval_split
    eval_images = parallel.replicate(eval_split.images, mesh)
    n_steps = steps_per_epoch(len(dataset.train), batch_size)
    if state is None:
        graphdef, state = init_state(cfg, dataset.image_shape, n_steps, num_train=len(dataset.train))
    state, hp = parallel.replicate((state, hyperparameters(cfg, n_steps)), mesh)
    sharding = parallel.batched(mesh) if mesh is not None else None
    train_epoch = compiled_train_epoch(graphdef, cfg, len(dataset.train), sharding)
    evaluate = compiled_evaluate(graphdef, cfg, len(eval_split), eval_name)

    history: list[Metrics] = []
    start = int(state.epoch)
    if stopper is None:
        stopper = EarlyStopping.of(cfg, f"{eval_name}/loss", start)
    bar = _progress(range(start, cfg.train.epochs), progress, initial=start, total=cfg.train.epochs)
    for epoch in bar:
        if stop is not None and stop():
            break
        t0 = time.perf_counter()
        state, train_metrics = train_epoch(state, train_images, hp)
        evaluated = evaluate(state, eval_images, hp) if eval_due(cfg, epoch + 1) else {}
        metrics = {k: float(v) for k, v in {**train_metrics, **evaluated}.items()}
        metrics.update(epoch=epoch + 1, step=int(state.step), epoch_seconds=time.perf_counter() - t0)
        check_finite(metrics, epoch + 1)
        history.append(metrics)
        if hasattr(bar, "set_postfix"):
            shown = {"loss": metrics["train/loss"], f"{eval_name}/loss": metrics.get(f"{eval_name}/loss")}
            bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items() if v is not None})
        done = stopper.should_stop(metrics, state)
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics, state)
        if done:
            break
    return FitResult(graphdef, stopper.best_state or state, history)


def eval_due(cfg, epoch: int) -> bool:
    """Whether epoch `epoch` (1-based) evaluates the eval split: every train.eval_every and the last."""
    every = cfg.train.eval_every
    return epoch >= cfg.train.epochs or (every > 0 and epoch % every == 0)


class EarlyStopping:
    """Stop once `metric` (the validation loss) has not improved for `patience` epochs; keep
    the best epoch's state. patience 0 never stops and keeps nothing. Epochs before `count_from`
    (train.early_stopping_from: the KL warm-up's) never count towards the patience, but the best is
    kept from the first epoch on, as the VampPrior and Exemplar VAE code does."""

    def __init__(self, patience: int, metric: str, start_epoch: int = 0, count_from: int = 0):
        self.patience, self.metric, self.count_from = patience, metric, count_from
        self.best_loss, self.best_epoch, self.best_state = math.inf, start_epoch, None

    @classmethod
    def of(cls, cfg, metric: str, start_epoch: int = 0) -> EarlyStopping:
        """The early stopping that cfg.train asks for."""
        return cls(cfg.train.early_stopping_patience, metric, start_epoch, cfg.train.early_stopping_from)

    def resume(self, history: list[Metrics], best_state: Callable[[int], TrainState]) -> EarlyStopping:
        """Continue after a restart: the best of the epochs in `history` (the records before
        it) and `best_state(epoch)`, that epoch's state, so the run stops and keeps what an
        uninterrupted one would."""
        if self.patience and history:
            best = min(history, key=lambda h: h[self.metric])  # the first of equal losses, as should_stop
            self.best_loss, self.best_epoch = best[self.metric], best["epoch"]
            self.best_state = best_state(self.best_epoch)
        return self

    def should_stop(self, metrics: Metrics, state: TrainState) -> bool:
        if not self.patience:
            return False
        if metrics[self.metric] < self.best_loss:
            self.best_loss, self.best_epoch = metrics[self.metric], metrics["epoch"]
            self.best_state = jax.tree.map(jnp.copy, state)  # the next epoch donates `state`
            return False
        return metrics["epoch"] - max(self.best_epoch, self.count_from - 1) >= self.patience


# --- runs trained elsewhere (members of a vmapped sweep group) ----------------------

@dataclass
class Trained:
    """A run trained as one member of a vmapped group, handed to its `fit` as an argument:
    the metrics of each epoch it ran (up to its early stop) and the state it keeps (the
    last epoch's, or the best epoch's under early stopping)."""

    graphdef: Any
    history: list[Metrics]
    state: TrainState


def _replay(trained: Trained, on_epoch) -> FitResult:
    """`fit`'s loop over epochs trained elsewhere: the same records and checks. `on_epoch`
    receives the kept state at its own epoch and None at the others (nothing to checkpoint)."""
    kept = int(trained.state.epoch)
    for metrics in trained.history:
        check_finite(metrics, metrics["epoch"])
        if on_epoch is not None:
            on_epoch(metrics["epoch"], metrics, trained.state if metrics["epoch"] == kept else None)
    return FitResult(trained.graphdef, trained.state, list(trained.history))


def check_finite(metrics: Metrics, epoch: int) -> None:
    for name, value in sorted(metrics.items(), key=lambda kv: not kv[0].endswith("/loss")):  # loss first
        if not np.isfinite(value):
            raise NonFiniteLoss(
                f"{name} became {value} in epoch {epoch}; lower optimizer.learning_rate "
                "(or set optimizer.grad_clip) and check the loss scale")


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc="epochs", unit="epoch", dynamic_ncols=True, **kwargs)
