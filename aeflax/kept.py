"""A long evaluation pass's finished batches, kept in the run directory, so that a stop signal or
a crash costs the batch in flight and not the pass: the k = 5000 likelihood of a mixture prior
takes hours on a CPU, longer than a scheduler's slot or a session.

A batch's outputs depend only on the state, the images and the batch's first index (its keys
are folded from it), so a pass resumed from its kept batches gives the numbers of one that ran
through (tested).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

DIRNAME = "eval_progress"  # in the run directory; removed once the evaluation is recorded
SAVE_EVERY_SECONDS = 60.0


class Stopped(RuntimeError):
    """A stop signal ended a kept pass between two batches; what it finished is on disk."""

    def __init__(self, what: str, done: int, total: int):
        super().__init__(f"{what}: {done} of {total} images done and kept")
        self.what, self.done, self.total = what, done, total


class KeptBatches:
    """Where one pass keeps its finished outputs: `<run>/eval_progress/<name>.npz`, with the
    `fingerprint` (the state's epoch and step, the pass's settings) that must match to reuse them.

    `stop()` is asked after each batch: when it says yes the outputs so far are saved and
    `Stopped` is raised. Otherwise they are saved every `every_s` seconds and at the end.
    """

    def __init__(self, run_dir: Path, name: str, fingerprint: dict,
                 stop: Optional[Callable[[], bool]] = None, every_s: float = SAVE_EVERY_SECONDS):
        self.path = Path(run_dir) / DIRNAME / f"{name}.npz"
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))  # as it reads back
        self.stop = stop or (lambda: False)
        self.every_s = every_s
        self._saved_at = time.monotonic()

    def load(self) -> tuple[int, dict[str, np.ndarray]]:
        """(images done, their outputs) by an earlier attempt of this pass; (0, {}) if none."""
        if not self.path.exists():
            return 0, {}
        try:
            with np.load(self.path, allow_pickle=False) as z:
                theirs = json.loads(str(z["fingerprint"]))
                outputs = {k: z[k] for k in z.files if k != "fingerprint"}
        except (OSError, ValueError, KeyError) as err:
            log.warning("%s is damaged (%s: %s); the pass starts over", self.path, type(err).__name__, err)
            return 0, {}
        if theirs != self.fingerprint:
            ours = self.fingerprint
            changed = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            log.warning("%s was kept for another pass (%s differ); the pass starts over", self.path,
                        ", ".join(changed))
            return 0, {}
        done = len(next(iter(outputs.values()))) if outputs else 0
        log.info("%s: %d images done by an earlier attempt, continuing", self.path, done)
        return done, outputs

    def save(self, outputs: dict[str, np.ndarray]) -> None:
        """Write the outputs so far; readers see the old file or the new one (temporary + rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, fingerprint=np.array(json.dumps(self.fingerprint, sort_keys=True)), **outputs)
        os.replace(tmp, self.path)
        self._saved_at = time.monotonic()

    def after_batch(self, outputs: Callable[[], dict[str, np.ndarray]], done: int, total: int,
                    what: str) -> None:
        """Save when it is time, at the end, or at a stop signal (then raise Stopped)."""
        stopping = done < total and self.stop()
        if stopping or done == total or time.monotonic() - self._saved_at >= self.every_s:
            self.save(outputs())
        if stopping:
            raise Stopped(what, done, total)


def images_done(run_dir: Path) -> dict[str, int]:
    """How many images each kept pass of a run has done, by pass name (for reports; the pass itself
    checks its fingerprint before it reuses them)."""
    done = {}
    for path in sorted((Path(run_dir) / DIRNAME).glob("*.npz")):
        if path.name.startswith("."):
            continue  # a save in flight
        with np.load(path, allow_pickle=False) as z:
            outputs = [k for k in z.files if k != "fingerprint"]
            done[path.stem] = len(z[outputs[0]]) if outputs else 0
    return done


def remove(run_dir: Path) -> None:
    """Drop every kept pass of a run: its evaluation is recorded (or starts afresh)."""
    shutil.rmtree(Path(run_dir) / DIRNAME, ignore_errors=True)
