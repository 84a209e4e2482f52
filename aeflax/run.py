"""`train_and_evaluate(cfg, workdir)`: one training run and its record, without Hydra.

This is the whole run a user launches: validate the config, load the data, train with a
progress bar, evaluate, draw the figures, and leave summary.json, metrics.jsonl,
figures/, checkpoints/ and the W&B run in `workdir`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from aeflax import checkpoint, data, evaluation, training
from aeflax.config import ConfigError, validate
from aeflax.tracking import RunRecord, WandbRun

logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO


def process_start_time() -> float:
    """Wall-clock time this process started (Linux /proc), for the start-up figure."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return time.time()


def check_compatible(cfg, dataset: data.Dataset) -> None:
    """Fail early, with the fix, when the model cannot take the dataset's images."""
    h, w, c = dataset.image_shape
    if cfg.model.architecture == "conv":
        factor = cfg.model.conv.stride ** len(cfg.model.conv.channels)
        if h % factor or w % factor:
            raise ConfigError(
                f"model.conv with {len(cfg.model.conv.channels)} stride-{cfg.model.conv.stride} layers needs "
                f"height and width divisible by {factor}, but {dataset.name} images are {h}x{w}x{c}; "
                "change model.conv.channels or model.conv.stride")
    if cfg.data.binarize != "none" and c != 1:
        raise ConfigError(f"data.binarize={cfg.data.binarize} is for grey-scale images; {dataset.name} has "
                          f"{c} channels")


def train_and_evaluate(cfg, workdir, *, config_dict: Optional[dict] = None, group: Optional[str] = None,
                       progress: bool = True) -> dict:
    """Train and evaluate one configuration; return the summary written to summary.json.

    Errors propagate after the summary records status "failed" and the error line.
    """
    started = process_start_time()
    workdir = Path(workdir)
    record = RunRecord(workdir)
    summary: dict[str, Any] = {"status": "running", "seed": int(cfg.seed), "name": cfg.name}
    record.write_summary(summary)
    tracker: Optional[WandbRun] = None
    try:
        validate(cfg)
        dataset = data.load(cfg.data)
        check_compatible(cfg, dataset)
        tracker = WandbRun(cfg.logger, workdir, config_dict or {}, name=workdir.name, group=group)
        mgr = checkpoint.manager(workdir)
        summary["time/startup_seconds"] = time.time() - started

        def on_epoch(epoch, metrics, state):
            record.log(metrics)
            if tracker:
                tracker.log(metrics, step=epoch)
            every = cfg.train.checkpoint_every
            if epoch == cfg.train.epochs or (every and epoch % every == 0):
                checkpoint.save(mgr, epoch, state)

        result = training.fit(cfg, dataset, on_epoch=on_epoch, progress=progress)
        final = dict(result.history[-1])
        if dataset.val is not None:  # the held-out test set, once, at the end
            hp = training.hyperparameters(cfg, 1)
            evaluate = jax.jit(training.make_evaluate(result.graphdef, cfg, len(dataset.test), "test"))
            final.update({k: float(v) for k, v in evaluate(result.state, dataset.test.images, hp).items()})
        final.update(evaluation.evaluate_run(cfg, result, dataset, workdir, tracker))
        epoch_times = [h["epoch_seconds"] for h in result.history]
        summary.update({k: v for k, v in final.items() if "/" in k})
        summary.update({
            "status": "finished", "epochs": int(result.state.epoch), "step": int(result.state.step),
            "wall_seconds": time.time() - started,
            "time/first_epoch_seconds": epoch_times[0],
            "time/epoch_seconds": float(np.mean(epoch_times[1:] or epoch_times)),
            "wandb_id": tracker.id if tracker else None,
        })
        record.write_summary(summary)
        if tracker:
            tracker.summary(summary)
            tracker.finish()
        return summary
    except BaseException as err:
        summary.update(status="failed", error=_one_line(err), wall_seconds=time.time() - started)
        record.write_summary(summary)
        if tracker:
            tracker.summary({"status": "failed", "error": summary["error"]})
            tracker.finish(exit_code=1)
        raise


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"

