"""`train_and_evaluate(cfg, workdir)`: one training run and its record, without Hydra.

This is the whole run a user launches: validate the config, load the data, train with a
progress bar, evaluate, draw the figures, and leave summary.json, metrics.jsonl,
figures/, checkpoints/ and the W&B run in `workdir`.

A run directory is resumable: re-running the same command into it continues from the
last checkpoint (and the same W&B run id), skips a finished run, and `fresh=true` starts
over. One process at a time holds it (a lock file).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Optional

from aeflax import data
from aeflax.config import Config, ConfigError, validate
from aeflax.tracking import (
    METRICS,
    SUMMARY,
    RunLock,
    RunRecord,
    WandbRun,
    read_metrics,
    read_summary,
    write_json_atomic,
)

logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
log = logging.getLogger(__name__)

SETTINGS = "settings.json"  # the options that decide the numbers of the run in this directory
# options that do not change the trained numbers, so a run may resume or be skipped across them
NOT_SETTINGS = ("fresh", "name", "objective", "logger.", "eval.", "train.checkpoint_every", "data.data_dir")


_RUNS_IN_PROCESS = 0


def run_start_time() -> float:
    """When this run started: the process start for the first run in a process (so start-up
    counts the interpreter and imports), the call itself for later jobs of a multirun."""
    global _RUNS_IN_PROCESS
    _RUNS_IN_PROCESS += 1
    return process_start_time() if _RUNS_IN_PROCESS == 1 else time.time()


def process_start_time() -> float:
    """Wall-clock time this process started (Linux /proc), for the start-up figure."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return time.time()


def check_compatible(cfg: Config, dataset: data.Dataset) -> None:
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


def train_and_evaluate(cfg: Config, workdir: str | Path, *, config_dict: Optional[dict] = None,
                       group: Optional[str] = None, progress: bool = True) -> dict:
    """Train and evaluate one configuration; return the summary written to summary.json.

    A finished run in `workdir` is returned as it is (unless cfg.fresh); an unfinished one
    resumes from its last checkpoint. Errors propagate after the summary records status
    "failed" and the error line.
    """
    started = run_start_time()
    workdir = Path(workdir)
    check_writable(workdir)
    with RunLock(workdir):
        record = RunRecord(workdir)
        previous = read_summary(workdir) or {}
        finished = previous.get("status") == "finished"
        summary: dict[str, Any] = {"status": "running", "seed": int(cfg.seed), "name": cfg.name}
        try:
            validate(cfg)
        except ConfigError as err:
            if not finished:  # never overwrite a finished record with a typo's failure
                _record_failure(record, summary, err, started, None)
            raise
        if not cfg.fresh:
            check_same_settings(workdir, settings(cfg))
        if finished and not cfg.fresh:
            log.info("%s already finished; returning its summary (fresh=true runs it again)", workdir)
            return previous
        if cfg.fresh:
            clear(workdir)
            previous = {}
        summary["wandb_id"] = previous.get("wandb_id")
        record.write_summary(summary)
        tracker: Optional[WandbRun] = None
        try:
            dataset = data.load(cfg.data)
            check_compatible(cfg, dataset)
            tracker = WandbRun(cfg.logger, workdir, config_dict or {}, name=workdir.name, group=group,
                               run_id=summary["wandb_id"])
            summary["wandb_id"] = tracker.id or summary["wandb_id"]
            record.write_summary(summary)  # the id is kept from now on: a resume continues this W&B run
            return _train(cfg, dataset, workdir, record, tracker, summary, started, progress)
        except BaseException as err:
            _record_failure(record, summary, err, started, tracker)
            raise


def _train(cfg, dataset: data.Dataset, workdir: Path, record: RunRecord, tracker: WandbRun, summary: dict,
           started: float, progress: bool) -> dict:
    """Restore the last checkpoint (if any), train the remaining epochs, evaluate, record."""
    import jax  # JAX and Orbax load only now, so that bad input fails in a second, before them
    import numpy as np

    from aeflax import checkpoint, evaluation, training

    mgr = checkpoint.manager(workdir)
    n_steps = training.steps_per_epoch(len(dataset.train), min(cfg.train.batch_size, len(dataset.train)))
    graphdef, state = training.init_state(cfg, dataset.image_shape, n_steps)
    last = checkpoint.latest_epoch(mgr)
    if last is not None:
        if last > cfg.train.epochs:
            raise checkpoint.CheckpointError(
                f"{mgr.directory} holds epoch {last} but train.epochs={cfg.train.epochs}; raise train.epochs "
                f"or {checkpoint.FRESH_HINT}")
        state = checkpoint.restore(mgr, state, last)
        summary["resumed_from_epoch"] = last
        log.info("resuming %s from the checkpoint of epoch %d", workdir, last)
    record.truncate_after(last or 0)  # points logged after the checkpoint are logged again
    write_json_atomic(workdir / SETTINGS, settings(cfg))  # from now on the directory holds this run
    earlier = [p for p in read_metrics(workdir) if "epoch_seconds" in p]  # fit's points before the checkpoint
    summary["time/startup_seconds"] = time.time() - started

    # a member of a vmapped sweep group replays epochs trained already: only its last checkpoint
    # is worth the write (a crash during the replay, about a second, retrains that run alone)
    replaying = training.will_replay(cfg, state)

    def on_epoch(epoch, metrics, state):
        record.log(metrics)
        tracker.log(metrics, step=epoch)
        every = cfg.train.checkpoint_every
        if epoch == cfg.train.epochs or (every and epoch % every == 0 and not replaying):
            checkpoint.save(mgr, epoch, state)

    if cfg.eval.figures:  # matplotlib (about 0.9 s) loads beside the training, not after it
        threading.Thread(target=importlib.import_module, args=("aeflax.figures",), daemon=True).start()
    result = training.fit(cfg, dataset, state=state, graphdef=graphdef, on_epoch=on_epoch, progress=progress)
    result.history = earlier + result.history  # every epoch, those before a resume included
    checkpoint.save_final(mgr, result.state)  # the kept state (the best epoch's after early stopping)
    final = dict(next(h for h in reversed(result.history) if h["epoch"] == int(result.state.epoch)))
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
    })
    record.write_summary(summary)
    tracker.summary(summary)
    tracker.finish()
    return summary


def check_writable(workdir: Path) -> None:
    """Fail before any work when the run directory cannot be created or written."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output directory {workdir} is not writable ({err.strerror or err}); "
                          "choose another one (hydra.run.dir=... or hydra.sweep.dir=...)") from None


def clear(workdir: Path) -> None:
    """fresh=true: delete the checkpoints, the record and the figures of an earlier run."""
    from aeflax import checkpoint

    shutil.rmtree(workdir / checkpoint.DIRNAME, ignore_errors=True)
    shutil.rmtree(workdir / "figures", ignore_errors=True)
    for name in (SUMMARY, METRICS, SETTINGS, checkpoint.DIGESTS):
        (workdir / name).unlink(missing_ok=True)


def settings(cfg: Config) -> dict:
    """The options that decide a run's numbers, flat: {"train.epochs": 10, ...}."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg),
                                  resolve=True)

    def flat(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    return {k: v for k, v in flat(tree).items() if not k.startswith(NOT_SETTINGS)}


def check_same_settings(workdir: Path, ours: dict) -> None:
    """A run directory holds one configuration: refuse to resume or skip a run of another."""
    try:
        theirs = json.loads((workdir / SETTINGS).read_text())
    except (OSError, ValueError):
        return
    changed = [f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}" for k in sorted(set(ours) | set(theirs))
               if ours.get(k) != theirs.get(k)]
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise ConfigError(f"{workdir} holds a run with other settings ({shown}); run again with fresh=true "
                          "to replace it, or choose another output directory (hydra.run.dir=...)")


def _record_failure(record: RunRecord, summary: dict, err: BaseException, started: float,
                    tracker: Optional[WandbRun]) -> None:
    summary.update(status="failed", error=_one_line(err), wall_seconds=time.time() - started)
    record.write_summary(summary)
    if tracker:
        tracker.summary({"status": "failed", "error": summary["error"]})
        tracker.finish(exit_code=1)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"

