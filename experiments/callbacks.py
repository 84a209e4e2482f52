"""Hydra callbacks: checks that must run before Hydra creates the output directory.

Hydra makes the run (or sweep) directory before calling the task, so an unwritable one
would end in Hydra's own traceback; this turns it into one line and exit code 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CheckOutputDir(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_if_unwritable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_if_unwritable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


def unwritable(path: Path) -> Optional[str]:
    """Why `path` cannot be created and written into, or None; creates nothing."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is not a directory"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{parent} is not writable"
            return None
    return None


def _exit_if_unwritable(path: Path, key: str) -> None:
    problem = unwritable(path.absolute())
    if problem:
        print(f"error: output directory {path} is not writable ({problem}); choose another one "
              f"({key}=...)", file=sys.stderr)
        sys.exit(1)
