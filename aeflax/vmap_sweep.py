"""Vectorized sweeps: the runs of a sweep that share one program train as one `jax.vmap`.

Runs that differ only in the seed and traced hyperparameters (the fields declared with
`aeflax.parts.traced`: learning rate, weight decay, beta, KL warm-up, noise level, penalty
weights, commitment, ...) compile to the same epoch: those values travel in `hp` and the
state, so one jitted `vmap(train_epoch)` trains the whole group, stacking the members'
states (each initialised exactly as its solo run) and hyperparameters along a leading axis.
Anything else (shapes, which parts are switched on, the data) makes a different program and
a different group. Every member's numbers equal its solo run's to float tolerance.

`group_configs` partitions configs; `train_group` trains one group and returns a
`training.Trained` per member, which the launcher hands to that member's ordinary
`train_and_evaluate(..., trained=...)` (record, checkpoints, evaluation, W&B as a solo run).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Optional

import jax
import numpy as np

from aeflax import data, parts, training
from aeflax.config import settings, traced_fields


def group_key(cfg) -> str:
    """Configs with equal keys compile to the same vmappable epoch: equal settings but for the
    seed and the traced values, and the same parts switched on (a weight of 0 removes a term)."""
    varied = {"seed", *traced_fields()}
    program = {k: v for k, v in settings(cfg).items() if k not in varied}
    return json.dumps({"settings": program, "parts": parts.active_names(cfg)}, sort_keys=True, default=str)


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
    member what its run needs: its history (the metrics a solo `fit` would log,
    `epoch_seconds` being the group's epoch time), up to its own early stop, and the state
    it keeps (its last epoch's, or its best epoch's under early stopping).
    """
    cfg = cfgs[0]
    assert all(group_key(c) == group_key(cfg) for c in cfgs), "configs of different programs"
    dataset = dataset if dataset is not None else data.load(cfg.data)
    n_train = len(dataset.train)
    n_steps = training.steps_per_epoch(n_train, min(cfg.train.batch_size, n_train))
    inits = [training.init_state(c, dataset.image_shape, n_steps, num_train=n_train) for c in cfgs]
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
    stoppers = [training.EarlyStopping.of(c, f"{eval_name}/loss") for c in cfgs]
    running = list(range(len(cfgs)))  # members that have not stopped early
    epochs = range(cfg.train.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=f"{len(cfgs)} runs as one", unit="epoch", dynamic_ncols=True)
    for epoch in epochs:
        t0 = time.perf_counter()
        state, train_metrics = train_epoch(state, train_images, hp)
        due = [training.eval_due(c, epoch + 1) for c in cfgs]  # train.eval_every may differ between members
        evaluated = jax.device_get(evaluate(state, eval_images, hp)) if any(due[i] for i in running) else {}
        metrics = jax.device_get(train_metrics)
        steps = jax.device_get(state.step)
        seconds = time.perf_counter() - t0
        for i in list(running):
            m = {k: float(v[i]) for k, v in {**metrics, **(evaluated if due[i] else {})}.items()}
            m.update(epoch=epoch + 1, step=int(steps[i]), epoch_seconds=seconds)
            histories[i].append(m)  # a non-finite metric fails that member's run when it replays
            if stoppers[i].patience and stoppers[i].should_stop(m, _member(state, i)):
                running.remove(i)
        if not running:
            break
    return [training.Trained(graphdef, h, stopper.best_state or _member(state, i))
            for i, (h, stopper) in enumerate(zip(histories, stoppers, strict=True))]
