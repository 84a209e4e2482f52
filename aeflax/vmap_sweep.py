"""Vectorized sweeps: the runs of a sweep that share one program train as one `jax.vmap`.

Runs that differ only in scalar hyperparameters (learning rate, weight decay, beta, KL
warm-up, noise level, penalty weights, commitment) and the seed compile to the same
epoch: those values travel in `hp` and the state, so one jitted
`vmap(train_epoch)` trains the whole group, stacking the members' states (each
initialised exactly as its solo run) and hyperparameters along a leading axis. Anything
else (shapes, losses, which penalty terms exist, the data) makes a different program
and a different group. Every member's numbers equal its solo run's to float tolerance.

`group_configs` partitions configs; `train_group` trains one group and returns a
`training.Trained` per member, which `training.provide_trained` hands to that member's
ordinary `train_and_evaluate` (record, checkpoints, evaluation, W&B as a solo run).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Optional

import jax
import numpy as np
from omegaconf import OmegaConf

from aeflax import data, training

# config fields that are traced values (in `hp` or the state), not part of the program
VMAPPED = ("seed", "optimizer.learning_rate", "optimizer.weight_decay", "loss.beta", "loss.warmup_epochs",
           "noise.std", "noise.prob", "penalty.l1_activity", "penalty.kl_sparsity", "penalty.sparsity_target",
           "penalty.contractive", "penalty.l1_weight", "penalty.l2_weight", "bottleneck.commitment")
# weights whose zero / non-zero switches a term on or off (a different program)
SWITCHES = ("penalty.l1_activity", "penalty.kl_sparsity", "penalty.contractive", "penalty.l1_weight",
            "penalty.l2_weight")
IGNORED = training.NOT_TRAINING  # each member keeps its own


def _tree(cfg) -> dict:
    node = cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg)
    return OmegaConf.to_container(node, resolve=True)


def group_key(cfg) -> str:
    """Configs with equal keys compile to the same vmappable epoch."""
    tree = _tree(cfg)
    for name in IGNORED:
        tree.pop(name, None)
    for dotted in VMAPPED:
        *parents, leaf = dotted.split(".")
        node = tree
        for p in parents:
            node = node[p]
        value = node.pop(leaf)
        if dotted in SWITCHES:
            node[f"{leaf}>0"] = value > 0
    return json.dumps(tree, sort_keys=True, default=str)


def group_configs(cfgs: Sequence) -> list[list[int]]:
    """Indices of `cfgs` grouped by program, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(group_key(cfg), []).append(i)
    return list(groups.values())


def _stack(trees):
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _member(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def default_chunk(members: int) -> int:
    """Members trained side by side by one vmap; the program scans over such chunks.

    On a CPU the whole group as one vmap is slower than two at a time (8 seed AEs, one 60k
    epoch, 2 cores: 3.7 s at 8, 2.5 s at 2, 2.8 s one by one; 8 VAEs: 19.7, 19.6 and 24.2 s):
    the stacked activations outgrow the caches. GPUs and TPUs take the whole group at once.
    """
    return min(members, 2) if jax.default_backend() == "cpu" else members


def group_epoch(train_epoch, chunk: int):
    """`train_epoch` over stacked states and hp: vmapped `chunk` members at a time."""
    def epoch(states, images, hp):
        return jax.lax.map(lambda s_hp: train_epoch(s_hp[0], images, s_hp[1]), (states, hp), batch_size=chunk)
    return epoch


def train_group(cfgs: Sequence, dataset=None, progress: bool = False,
                chunk: Optional[int] = None) -> list[training.Trained]:
    """Train configs of one group (equal `group_key`) as one compiled, vmapped program.

    `chunk` members run side by side in one vmap (default: `default_chunk`). Returns per
    member its history (the metrics a solo `fit` would log, `epoch_seconds` being the
    group's epoch time) and its state after every epoch (host memory).
    """
    cfg = cfgs[0]
    assert all(group_key(c) == group_key(cfg) for c in cfgs), "configs of different programs"
    dataset = dataset if dataset is not None else data.load(cfg.data)
    n_train = len(dataset.train)
    n_steps = training.steps_per_epoch(n_train, min(cfg.train.batch_size, n_train))
    inits = [training.init_state(c, dataset.image_shape, n_steps) for c in cfgs]
    graphdef = inits[0][0]
    state = jax.device_put(_stack([s for _, s in inits]))
    hp = jax.device_put(_stack([training.hyperparameters(c, n_steps) for c in cfgs]))
    eval_name, eval_split = dataset.eval_split
    chunk = chunk or default_chunk(len(cfgs))
    grouped = group_epoch(training.make_train_epoch(graphdef, cfg, n_train), chunk)
    train_epoch = jax.jit(grouped, donate_argnums=0)
    evaluate = jax.jit(jax.vmap(training.make_evaluate(graphdef, cfg, len(eval_split), eval_name),
                                in_axes=(0, None, 0)))
    train_images, eval_images = jax.device_put(dataset.train.images), jax.device_put(eval_split.images)

    histories: list[list[dict]] = [[] for _ in cfgs]
    states: list[list] = [[] for _ in cfgs]
    epochs = range(cfg.train.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=f"{len(cfgs)} runs as one", unit="epoch", dynamic_ncols=True)
    for epoch in epochs:
        t0 = time.perf_counter()
        state, train_metrics = train_epoch(state, train_images, hp)
        metrics = jax.device_get({**train_metrics, **evaluate(state, eval_images, hp)})
        host = jax.device_get(state)
        seconds = time.perf_counter() - t0
        for i in range(len(cfgs)):
            m = {k: float(v[i]) for k, v in metrics.items()}
            m.update(epoch=epoch + 1, step=int(host.step[i]), epoch_seconds=seconds)
            histories[i].append(m)
            states[i].append(_member(host, i))
    return [training.Trained(graphdef, h, s) for h, s in zip(histories, states, strict=True)]


def provide(cfgs: Sequence, progress: bool = False, chunk: Optional[int] = None) -> None:
    """Train every group of `cfgs` vectorized and hand each member's result to its `fit`."""
    for members in group_configs(cfgs):
        group = [cfgs[i] for i in members]
        for c, trained in zip(group, train_group(group, progress=progress, chunk=chunk), strict=True):
            training.provide_trained(c, trained)
