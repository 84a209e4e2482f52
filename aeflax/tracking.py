"""The run record (summary.json, metrics.jsonl) and the W&B run, under one interface.

The local record is the source of truth: tables and resumption read it, so it is written
atomically (summary.json via a temporary file and rename; metrics.jsonl one flushed line
per point). W&B mirrors it under the same metric names; any W&B failure becomes one
warning and training goes on.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _clean(metrics: dict) -> dict:
    """Floats that JSON can hold (NaN/Inf become strings so the record stays valid JSON)."""
    out = {}
    for k, v in metrics.items():
        v = v.item() if hasattr(v, "item") else v
        out[k] = str(v) if isinstance(v, float) and not math.isfinite(v) else v
    return out


def read_summary(run_dir) -> Optional[dict]:
    path = Path(run_dir) / SUMMARY
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunRecord:
    """summary.json + metrics.jsonl in a run directory."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS

    def log(self, metrics: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(_clean(metrics), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, epoch: int) -> None:
        """Drop points logged after `epoch` (a resumed run re-logs them)."""
        kept = [m for m in read_metrics(self.run_dir) if m.get("epoch", 0) <= epoch]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in kept))
        os.replace(tmp, self.metrics_path)

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.run_dir / SUMMARY, _clean(summary))


class WandbRun:
    """A W&B run that never stops training: failures become one warning and a no-op."""

    def __init__(self, logger_cfg, run_dir, config: dict, name: str, group: Optional[str],
                 run_id: Optional[str] = None):
        self.run = None
        if logger_cfg.mode == "disabled":
            return
        try:
            import wandb

            if logger_cfg.mode == "online" and not (os.environ.get("WANDB_API_KEY") or _has_netrc()):
                raise RuntimeError("logger.mode=online needs an API key (wandb login or WANDB_API_KEY); "
                                   "use logger.mode=offline and `wandb sync` later")
            self.run = wandb.init(
                project=logger_cfg.project, entity=logger_cfg.entity, group=group,
                job_type=logger_cfg.job_type, tags=list(logger_cfg.tags), name=name, config=config,
                dir=str(run_dir), mode=logger_cfg.mode, id=run_id, resume="allow" if run_id else None,
                settings=wandb.Settings(console="off", silent=True, init_timeout=60))
        except Exception as err:  # noqa: BLE001 - tracking must never lose a run
            warnings.warn(f"W&B disabled for this run ({type(err).__name__}: {err}); "
                          f"the local record in {run_dir} is still written", stacklevel=2)
            self.run = None

    @property
    def id(self) -> Optional[str]:
        return self.run.id if self.run is not None else None

    def _call(self, fn, *args, **kwargs):
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"W&B logging failed ({err}); continuing without W&B", stacklevel=3)
            self.run = None

    def log(self, metrics: dict, step: Optional[int] = None) -> None:
        self._call(lambda: self.run.log(metrics, step=step))

    def log_image(self, key: str, path, step: Optional[int] = None) -> None:
        def log():
            import wandb

            self.run.log({key: wandb.Image(str(path))}, step=step)

        self._call(log)

    def summary(self, summary: dict) -> None:
        self._call(lambda: self.run.summary.update(summary))

    def finish(self, exit_code: int = 0) -> None:
        self._call(lambda: self.run.finish(exit_code=exit_code))
        self.run = None


def _has_netrc() -> bool:
    netrc = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    return netrc.exists() and "api.wandb.ai" in netrc.read_text()
