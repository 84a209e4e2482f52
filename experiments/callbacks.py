"""Hydra callbacks: checks that must run before Hydra creates the output directory.

Hydra makes the run (or sweep) directory before calling the task, so one that cannot be
made would end in Hydra's own traceback; this makes it first and turns any failure (a file
in the way, no permission, a read-only or virtual file system such as /proc) into one line
and exit code 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aeflax.run import unwritable


class CheckOutputDir(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_if_unwritable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_if_unwritable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


def _exit_if_unwritable(path: Path, key: str) -> None:
    problem = unwritable(path.absolute())
    if problem:
        print(f"error: output directory {path} cannot be created or written ({problem}); choose another one "
              f"({key}=...)", file=sys.stderr)
        sys.exit(1)
