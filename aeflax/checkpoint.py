"""Orbax checkpoints of the whole TrainState (model, optimizer, PRNG key, counters).

The data order is not stored: it is derived from the seed and the epoch, both in the
state. Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a kill mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import orbax.checkpoint as ocp

DIRNAME = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message says how to start fresh."""


FRESH_HINT = "run again with fresh=true to start over (this deletes the run's checkpoints)"


def manager(run_dir, max_to_keep: int = 2) -> ocp.CheckpointManager:
    path = (Path(run_dir) / DIRNAME).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
                                           enable_async_checkpointing=False)
    try:
        return ocp.CheckpointManager(path, options=options)
    except Exception as err:  # noqa: BLE001 - an unreadable directory is one clear error
        raise CheckpointError(f"the checkpoints in {path} cannot be read ({_first_line(err)}); "
                              f"{FRESH_HINT}") from None


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
        raise CheckpointError(f"checkpoint {epoch} in {mgr.directory} cannot be read ({_first_line(err)}); "
                              f"{FRESH_HINT}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"
