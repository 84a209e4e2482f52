"""Orbax checkpoints of the whole TrainState (model, optimizer, PRNG key, counters).

The data order is not stored: it is derived from the seed and the epoch, both in the
state. Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a kill mid-save leaves the previous checkpoint as the latest. A digest of
each checkpoint's files, checked before restoring, turns a corrupted checkpoint into one
clear error instead of a restore that fails deep inside Orbax (or silently succeeds).

With several processes (aeflax.parallel) every process calls `save` and `restore`, as Orbax
requires on several hosts (it writes each array once and synchronises the processes); the
run directory must be on a file system they all see. Process 0 writes the digests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

    from aeflax.training import TrainState

DIRNAME = "checkpoints"
DIGESTS = "checkpoint_digests.json"  # beside checkpoints/: {epoch: sha256 of its files}
# Under early stopping, the best epoch's state so far, saved with each regular checkpoint: a
# resumed run keeps the best epoch from before the interruption (deleted when the run ends).
BEST_DIRNAME = "checkpoints_best"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message says how to start fresh."""


FRESH_HINT = "run again with fresh=true to start over (this deletes the run's checkpoints)"


def manager(run_dir: str | Path, max_to_keep: int = 2, dirname: str = DIRNAME) -> ocp.CheckpointManager:
    import orbax.checkpoint as ocp  # loads when a run saves or restores, not with this module

    path = (Path(run_dir) / dirname).absolute()
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; {FRESH_HINT}")
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
                                           enable_async_checkpointing=False)
    try:
        mgr = ocp.CheckpointManager(path, options=options)
    except Exception as err:  # noqa: BLE001 - an unreadable directory is one clear error
        raise CheckpointError(f"the checkpoints in {path} cannot be read ({_first_line(err)}); "
                              f"{FRESH_HINT}") from None
    _read_digests(mgr)  # a damaged digest file stops the run before it trains
    return mgr


def save(mgr: ocp.CheckpointManager, epoch: int, state: TrainState) -> None:
    import orbax.checkpoint as ocp

    mgr.save(epoch, args=ocp.args.StandardSave(state))
    mgr.wait_until_finished()
    if jax.process_index() != 0:
        return
    digests = _read_digests(mgr)
    digests = {k: v for k, v in digests.items() if int(k) in mgr.all_steps()}  # drop the deleted ones
    digests[str(epoch)] = _digest(Path(mgr.directory) / str(epoch))
    path = digests_path(mgr)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(digests, indent=1, sort_keys=True))
    os.replace(tmp, path)


def save_final(mgr: ocp.CheckpointManager, state: TrainState) -> None:
    """Make `state` the run's last checkpoint. After early stopping the kept state is an earlier
    epoch's: later checkpoints are deleted so that restoring (resume, load_run, evaluate.py)
    gives the model the run reports."""
    epoch = int(state.epoch)
    for step in [s for s in mgr.all_steps() if s > epoch]:
        mgr.delete(step)
    if epoch not in mgr.all_steps():
        save(mgr, epoch, state)


def latest_epoch(mgr: ocp.CheckpointManager) -> Optional[int]:
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)  # a garbled metadata file is reported by restore's digest check
    try:
        return mgr.latest_step()
    finally:
        absl.setLevel(level)


def restore(mgr: ocp.CheckpointManager, target: TrainState, epoch: Optional[int] = None) -> TrainState:
    """Restore into the structure of `target` (a freshly initialized TrainState)."""
    epoch = mgr.latest_step() if epoch is None else epoch
    if epoch is None:
        raise CheckpointError(f"no checkpoint in {mgr.directory}")
    import orbax.checkpoint as ocp

    expected = _read_digests(mgr).get(str(epoch))  # none if killed between saving and digesting
    if expected is not None and _digest(Path(mgr.directory) / str(epoch)) != expected:
        raise CheckpointError(f"checkpoint {epoch} in {mgr.directory} is corrupted (its files changed since "
                              f"it was written); {FRESH_HINT}")
    try:
        return mgr.restore(epoch, args=ocp.args.StandardRestore(target))
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is one clear error
        raise CheckpointError(f"checkpoint {epoch} in {mgr.directory} cannot be read ({_first_line(err)}); "
                              f"{FRESH_HINT}") from None


def _digests_name(dirname: str) -> str:
    return DIGESTS if dirname == DIRNAME else f"{dirname}_digests.json"


def digests_path(mgr: ocp.CheckpointManager) -> Path:
    """The digest file beside the manager's directory (checkpoint_digests.json for checkpoints/)."""
    directory = Path(mgr.directory)
    return directory.parent / _digests_name(directory.name)


def remove(run_dir: str | Path, dirname: str) -> None:
    """Delete a checkpoint directory and its digest file."""
    import shutil

    shutil.rmtree(Path(run_dir) / dirname, ignore_errors=True)
    (Path(run_dir) / _digests_name(dirname)).unlink(missing_ok=True)


def existing_manager(run_dir: str | Path) -> Optional[ocp.CheckpointManager]:
    """The run's manager now where it has a checkpoints/ entry (a run to resume, or one to
    report) or runs as several processes (Orbax synchronises them as it makes one: on their main
    threads, at the same point); else None, and the Writer makes it (Orbax loads on its thread)."""
    if os.path.lexists(Path(run_dir) / DIRNAME) or jax.process_count() > 1:
        return manager(run_dir)
    return None


@jax.jit
def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


class Writer:
    """A run's checkpoint saves, written on a thread of their own while the next epochs train.

    `mgr` is the run's manager, or None for a run without checkpoints yet: then Orbax loads
    on that thread too. A save is written while the next epoch trains, one at a time: `save`
    waits for the one before (and raises its error), `manager()` for all of them. With several
    processes every save is written at once, in step with the others (Orbax's rule).
    """

    def __init__(self, run_dir: str | Path, mgr: Optional[ocp.CheckpointManager] = None):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="aeflax-checkpoint")
        self._mgr = self._pool.submit(lambda: mgr or manager(run_dir))
        self._last: Future = self._mgr
        self._saving: Optional[Future] = None
        self._inline = jax.process_count() > 1

    def save(self, epoch: int, state: TrainState) -> None:
        if self._saving is not None:  # one save at a time beside the training: a slow disk holds it
            self._saving.result()  # back and no copies pile up; an earlier failed save fails the run here
        state = _copy(state)  # the next epoch reuses (donates) the buffers of `state`
        self._saving = self._last = self._pool.submit(lambda: save(self._mgr.result(), epoch, state))
        if self._inline:
            self._last.result()

    def save_final(self, state: TrainState) -> None:
        """`save_final` after the saves queued before it (the run evaluates meanwhile)."""
        self._last = self._pool.submit(lambda: save_final(self._mgr.result(), state))
        if self._inline:
            self._last.result()

    def then(self, fn: Callable[[], None]) -> None:
        """Call `fn` on the saving thread once the saves queued before it are on disk (not if one failed)."""
        before = self._last
        self._last = self._pool.submit(lambda: (before.result(), fn()))
        if self._inline:
            self._last.result()

    def manager(self) -> ocp.CheckpointManager:
        """The run's manager once every save so far is on disk."""
        self._last.result()
        return self._mgr.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _digest(step_dir: Path) -> str:
    """sha256 over the relative paths and contents of every file of a checkpoint."""
    h = hashlib.sha256()
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(step_dir)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _read_digests(mgr: ocp.CheckpointManager) -> dict:
    """{epoch: digest}; {} before the first save. A damaged file is one clear error: without it
    the checkpoints cannot be checked, and it is never silently replaced."""
    path = digests_path(mgr)
    if not path.exists():
        return {}
    try:
        digests = json.loads(path.read_bytes())
        if not isinstance(digests, dict) or not all(k.isdigit() and isinstance(v, str)
                                                    for k, v in digests.items()):
            raise ValueError("not {epoch: sha256}")
        return digests
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is damaged ({type(err).__name__}: {str(err)[:80]}); delete it to use "
                              f"the checkpoints unchecked, or {FRESH_HINT}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"
