"""Orbax checkpoints of the whole TrainState (model, optimizer, PRNG key, counters)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import orbax.checkpoint as ocp

DIRNAME = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message says how to start fresh."""


def manager(run_dir, max_to_keep: int = 2) -> ocp.CheckpointManager:
    path = (Path(run_dir) / DIRNAME).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(path, options=options)


def save(mgr: ocp.CheckpointManager, epoch: int, state) -> None:
    mgr.save(epoch, args=ocp.args.StandardSave(state))
    mgr.wait_until_finished()


def latest_epoch(mgr: ocp.CheckpointManager) -> Optional[int]:
    return mgr.latest_step()


def restore(mgr: ocp.CheckpointManager, target, epoch: Optional[int] = None):
    """Restore into the structure of `target` (a freshly initialized TrainState)."""
    epoch = mgr.latest_step() if epoch is None else epoch
    if epoch is None:
        raise CheckpointError(f"no checkpoint in {mgr.directory}")
    try:
        return mgr.restore(epoch, args=ocp.args.StandardRestore(target))
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is one clear error
        raise CheckpointError(
            f"checkpoint {epoch} in {mgr.directory} cannot be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); run again with fresh=true to start over "
            "(this deletes the run's checkpoints)") from None
