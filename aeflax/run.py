"""`train_and_evaluate(cfg, workdir)`: one training run and its record, without Hydra.

This is the whole run a user launches: validate the config, load the data, train with a
progress bar, evaluate, draw the figures, and leave summary.json, metrics.jsonl,
figures/, checkpoints/ and the W&B run in `workdir`.

A run directory is resumable: re-running the same command into it continues from the
last checkpoint (and the same W&B run id), skips a finished run, and `fresh=true` starts
over. One process at a time holds it (a lock file). SIGTERM, SIGINT, SIGUSR1 and SIGUSR2
(a scheduler's pre-emption or time limit) stop it after the epoch in flight, saved, with
status "interrupted".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

from aeflax import data, parallel
from aeflax.config import Config, ConfigError, settings, validate
from aeflax.tracking import (
    METRICS,
    SUMMARY,
    TRAINED,
    BackgroundRun,
    RunLock,
    RunRecord,
    WandbRun,
    new_run_id,
    read_metrics,
    read_summary,
    start_service,
    write_json_atomic,
)

logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
log = logging.getLogger(__name__)

SETTINGS = "settings.json"  # config.settings: the options that decide the numbers of the run here


_RUNS_IN_PROCESS = 0


def run_start_time() -> float:
    """When this run started: the process start for the first run in a process (so start-up
    counts the interpreter and imports), the call itself for later jobs of a multirun."""
    global _RUNS_IN_PROCESS
    _RUNS_IN_PROCESS += 1
    return process_start_time() if _RUNS_IN_PROCESS == 1 else time.time()


def process_start_time() -> float:
    """Wall-clock time this process started (Linux /proc), for the start-up figure: its age is
    the system's uptime less its start in clock ticks since boot (the boot time in /proc/stat is
    rounded down to the second, which put up to a second into the figure)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


class Interrupted(RuntimeError):
    """A stop signal ended the run after a saved epoch, or between two kept batches of its
    evaluation (`evaluation` says where); the same command resumes it."""

    def __init__(self, signame: str, epoch: int, workdir: Path, evaluation: Optional[str] = None):
        where = f"in its evaluation ({evaluation})" if evaluation else f"after epoch {epoch} (saved)"
        super().__init__(f"{signame} stopped the run in {workdir} {where}; the same command resumes it")
        self.exit_code = 128 + getattr(signal, signame, signal.SIGTERM)  # the shell's code for the signal


class StopSignals:
    """SIGTERM, SIGINT, SIGUSR1, SIGUSR2 during a run: finish the epoch in flight, save it, stop.

    Slurm sends SIGTERM on pre-emption and a USR signal before the time limit (submitit asks
    for SIGUSR2 and requeues in its handler, which `pass_on` calls once the run has saved and
    recorded itself). The epoch in flight is one compiled program: it cannot be cut short, so
    an epoch longer than the scheduler's grace period ends by SIGKILL and the run resumes from
    the checkpoint before it. A second SIGINT (Ctrl-C twice) stops at once. A signal after the
    last epoch lets the run finish, then goes to the handler that was there before.
    """

    NAMES = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")

    def __init__(self):
        self.signum: Optional[int] = None
        self.stopped = False  # training stopped for a signal (on any process of the run)
        self.previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            for name in self.NAMES:
                sig = getattr(signal, name)
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if self.previous and self.signum is not None and not self.stopped and exc_type is None:
            # it came after the last epoch: the run finished and is written, and the signal still
            # stops the process (a sweep's launcher would otherwise go on to its next job)
            signal.raise_signal(self.signum)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        os.write(2, f"{signal.Signals(signum).name}: the run stops after the epoch in flight\n".encode())

    def agreed(self) -> bool:
        """Stop now? Asked by `fit` before each epoch; every process of a run gives the same answer."""
        self.stopped = parallel.any_process(self.signum is not None)
        return self.stopped

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal to another process"

    def pass_on(self) -> None:
        """Hand the signal to the handler that was there before (submitit's requeue and exit)."""
        handler = self.previous.get(self.signum)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(self.signum, None)


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
                       group: Optional[str] = None, progress: bool = True, trained=None) -> dict:
    """Train and evaluate one configuration; return the summary written to summary.json.

    A finished run in `workdir` is returned as it is (unless cfg.fresh); an unfinished one
    resumes from its last checkpoint. `trained` (a training.Trained from a vmapped sweep
    group) is this run's training, already done: a fresh run records and evaluates it
    instead of training. Errors propagate after the summary records status "failed" and
    the error line; a stop signal after it records "interrupted".
    Launched as several processes (parallel.initialize), process 0 holds the directory and
    writes everything but the checkpoints; the others train beside it.
    """
    started = run_start_time()
    workdir = Path(workdir)
    followers = _Followers()
    if followers.several:
        parallel.initialize()
        if not parallel.is_primary():
            with StopSignals() as signals:
                return _follow(cfg, workdir, signals)
    try:
        check_writable(workdir)
        with RunLock(workdir), StopSignals() as signals:
            return _lead(cfg, workdir, config_dict, group, progress, started, signals, followers, trained)
    finally:
        followers.tell(STOP)  # a no-op once they were told what to do


def _lead(cfg, workdir: Path, config_dict, group, progress: bool, started: float, signals: StopSignals,
          followers: _Followers, trained=None) -> dict:
    """The run as process 0 (or the only process) makes it, holding the directory's lock."""
    record = RunRecord(workdir)
    summary: dict[str, Any] = {"status": "running", "seed": int(cfg.seed), "name": cfg.name}
    previous = read_previous_summary(workdir)
    finished = previous.get("status") == "finished"
    try:
        validate(cfg)
    except ConfigError as err:
        if not finished:  # never overwrite a finished record with a typo's failure
            _record_failure(record, summary, err, started, None)
        raise
    if not cfg.fresh:
        check_same_settings(workdir, settings(cfg))
    if finished and not cfg.fresh:
        followers.tell(SKIP)
        log.info("%s already finished; returning its summary (fresh=true runs it again)", workdir)
        return previous
    if previous.get("status") == "running":  # we hold the lock, so its process is gone
        log.warning("%s: the last run here stopped without a word (killed, or its node lost) while its "
                    "record said running; resuming it from its last checkpoint", workdir)
    if cfg.fresh:
        clear(workdir)
        previous = {}
    run_id = previous.get("wandb_id")  # an earlier attempt's W&B run, continued
    summary["wandb_id"] = run_id
    record.write_summary(summary)
    followers.tell(GO)
    tracker: Optional[BackgroundRun] = None
    try:
        dataset = data.load(cfg.data)
        check_compatible(cfg, dataset)
        new_id = None if run_id else new_run_id(cfg.logger, workdir, workdir.name)
        tracker = BackgroundRun(lambda: WandbRun(cfg.logger, workdir, config_dict or {}, name=workdir.name,
                                                 group=group, run_id=run_id, new_id=new_id))
        summary["wandb_id"] = run_id or new_id
        record.write_summary(summary)  # the id is kept from now on: a resume continues this W&B run
        _train(cfg, dataset, workdir, record, tracker, summary, started, progress, signals, trained)
        summary["wandb_id"] = tracker.id or run_id  # None where W&B did not start
        record.write_summary(summary)
        tracker.summary(summary)
        tracker.finish()
        return summary
    except BaseException as err:
        if tracker is not None:
            summary["wandb_id"] = tracker.id or run_id
        _record_failure(record, summary, err, started, tracker)
        if isinstance(err, Interrupted):
            signals.pass_on()  # under submitit: requeue the job (and exit)
        raise


# what process 0 tells the other processes of a run once it has looked at the run directory
GO, SKIP, STOP = 0, 1, 2


class _Followers:
    """The other processes of a multi-process run, told once by process 0 whether to train."""

    def __init__(self):
        self.several = parallel.launched_as_several()
        self.told = not self.several

    def tell(self, code: int) -> None:
        if not self.told:
            self.told = True
            parallel.from_primary(code)


def _follow(cfg, workdir: Path, signals: StopSignals) -> dict:
    """A process other than 0: wait for process 0's look at the directory, then train beside it."""
    code = parallel.from_primary(GO)
    if code == STOP:
        raise ConfigError(f"process 0 stopped before training in {workdir}; its output says why")
    if code == SKIP:
        return read_summary(workdir) or {}
    validate(cfg)
    dataset = data.load(cfg.data)
    check_compatible(cfg, dataset)
    try:
        return _train(cfg, dataset, workdir, None, None, {}, time.time(), False, signals)
    except Interrupted:
        signals.pass_on()
        raise


def _train(cfg, dataset, workdir: Path, record: Optional[RunRecord], tracker: Optional[BackgroundRun],
           summary: dict, started: float, progress: bool, signals: StopSignals, trained=None) -> dict:
    """Restore the last checkpoint (if any), train the remaining epochs, evaluate; return `summary`
    with the final metrics (the caller writes it).

    Without a record (a process other than 0) only the training and the checkpoints are done."""
    import jax  # JAX and Orbax load only now, so that bad input fails in a second, before them
    import jax.numpy as jnp
    import numpy as np

    from aeflax import checkpoint, evaluation, kept, training

    primary = record is not None
    mgr = checkpoint.existing_manager(workdir)  # None: Orbax loads beside the training
    n_steps = training.steps_per_epoch(len(dataset.train), min(cfg.train.batch_size, len(dataset.train)))
    graphdef, state = training.init_state(cfg, dataset.image_shape, n_steps, num_train=len(dataset.train))
    last = checkpoint.latest_epoch(mgr) if mgr is not None else None
    if last is not None:
        if last > cfg.train.epochs:
            raise checkpoint.CheckpointError(
                f"{mgr.directory} holds epoch {last} but train.epochs={cfg.train.epochs}; raise train.epochs "
                f"or {checkpoint.FRESH_HINT}")
        state = checkpoint.restore(mgr, state, last)
        summary["resumed_from_epoch"] = last
        log.info("resuming %s from the checkpoint of epoch %d", workdir, last)
    trained_through = _trained_through(workdir, last)  # the training ended: only the evaluation is left
    until = trained_through or last
    if primary:
        record.truncate_after(until or 0)  # points logged after the checkpoint are logged again
        tracker.continue_from(read_metrics(workdir))  # offline: one W&B folder per run, resumed or not
        write_json_atomic(workdir / SETTINGS, settings(cfg))  # from now on the directory holds this run
    # fit's points before the checkpoint (every process reads them: early stopping continues from them)
    earlier = [p for p in read_metrics(workdir) if "epoch_seconds" in p and p["epoch"] <= until] \
        if until else []
    patience = cfg.train.early_stopping_patience
    best_mgr = checkpoint.manager(workdir, 1, checkpoint.BEST_DIRNAME) if patience else None
    stopper = training.EarlyStopping.of(cfg, f"{dataset.eval_split[0]}/loss", last or 0)

    def state_of(epoch):  # a copy: fit donates the state it starts from
        return jax.tree.map(jnp.copy, state) if epoch == last else checkpoint.restore(best_mgr, state, epoch)

    if last and patience and trained_through is None:
        stopper.resume(earlier, state_of)
    summary["time/startup_seconds"] = time.time() - started

    # a member of a vmapped sweep group replays epochs trained already: only its last checkpoint
    # is worth the write (a crash during the replay, about a second, retrains that run alone)
    replaying = trained is not None and last is None
    done = {"epoch": last or 0, "state": None}  # the last finished epoch, saved on a stop signal

    writer = checkpoint.Writer(workdir, mgr)
    best_writer = checkpoint.Writer(workdir, best_mgr) if best_mgr is not None else None
    best_saved = {"epoch": checkpoint.latest_epoch(best_mgr) if best_mgr is not None else None}

    def save(epoch, state):
        writer.save(epoch, state)
        best = stopper.best_state
        if best_writer is not None and best is not None and stopper.best_epoch != best_saved["epoch"]:
            best_writer.save(stopper.best_epoch, best)
            best_saved["epoch"] = stopper.best_epoch

    def saved():
        """The run's manager once every save so far is on disk."""
        if best_writer is not None:
            best_writer.manager()
        return writer.manager()

    def on_epoch(epoch, metrics, state):
        if primary:
            tracker.started()  # W&B holds every attempt that records an epoch (a resume joins them)
            record.log(metrics)
            tracker.log(metrics, step=epoch)
        every = cfg.train.checkpoint_every
        due = epoch == cfg.train.epochs or (every and epoch % every == 0 and not replaying)
        if state is not None and due:
            save(epoch, state)
        done.update(epoch=epoch, state=state)

    figures_ready = threading.Thread(target=_prepare_figures, args=(tracker,), daemon=True)
    if primary and cfg.eval.figures:  # matplotlib (about 0.9 s) loads beside the training, not after it
        figures_ready.start()
    try:
        if trained_through is None:
            trained_at = time.time()
            result = training.fit(cfg, dataset, state=state, graphdef=graphdef, on_epoch=on_epoch,
                                  progress=progress, trained=trained, stop=signals.agreed, stopper=stopper)
            summary["time/train_seconds"] = time.time() - trained_at  # the epochs, their records and saves
            if signals.stopped:
                if done["state"] is not None and done["epoch"] not in saved().all_steps():
                    save(done["epoch"], done["state"])
                    saved()
                raise Interrupted(signals.name, done["epoch"], workdir)
            writer.save_final(result.state)  # the kept state (the best epoch's after early stopping)
            if primary:  # once the kept state is on disk: a resume from here only evaluates
                marker = {"epochs": max((h["epoch"] for h in result.history), default=last or 0),
                          "kept_epoch": int(result.state.epoch)}
                writer.then(lambda: write_json_atomic(workdir / TRAINED, marker))
        else:
            log.info("%s: its training ended after epoch %d (the kept state: epoch %d); evaluating it",
                     workdir, trained_through, last)
            result = training.FitResult(graphdef, state, [])
        if not primary:
            saved()
            return {"status": "finished", "process": jax.process_index()}
        result.state = parallel.local_copy(result.state)  # several processes: process 0 evaluates alone
        result.history = earlier + result.history  # every epoch, those before a resume included
        final = dict(next(h for h in reversed(result.history) if h["epoch"] == int(result.state.epoch)))
        if dataset.val is not None:  # the held-out test set, once, at the end
            final.update(evaluation.test_metrics(cfg, result.graphdef, result.state, dataset.test))
        if figures_ready.is_alive():
            figures_ready.join()  # pyplot draws on one thread at a time
        try:
            final.update(evaluation.evaluate_run(cfg, result, dataset, workdir, tracker,
                                                 stop=lambda: signals.signum is not None))
        except kept.Stopped as err:
            saved()
            raise Interrupted(signals.name, int(result.state.epoch), workdir, str(err)) from None
        saved()  # the checkpoints are on disk before the run says it finished
        if best_writer is not None:
            checkpoint.remove(workdir, checkpoint.BEST_DIRNAME)  # the last checkpoint is the kept state now
        (workdir / TRAINED).unlink(missing_ok=True)
    finally:
        writer.close()
        if best_writer is not None:
            best_writer.close()
    epoch_times = [h["epoch_seconds"] for h in result.history]
    summary.update({k: v for k, v in final.items() if "/" in k})
    summary.update({
        "status": "finished", "epochs": int(result.state.epoch), "step": int(result.state.step),
        "wall_seconds": time.time() - started,
        "time/first_epoch_seconds": epoch_times[0],
        "time/epoch_seconds": float(np.mean(epoch_times[1:] or epoch_times)),
    })
    return summary


def _prepare_figures(tracker: BackgroundRun) -> None:
    """Load matplotlib and draw a first figure beside the training, once W&B has started: both
    parse Python source as they load, and CPython 3.11's ast.parse is not thread-safe (a W&B
    start beside it failed with "AST constructor recursion depth mismatch")."""
    tracker.started()
    prepare(wandb=False, figures=True)


def prepare(wandb: bool, figures: bool) -> None:
    """Load ahead what the first run of a process waits for at its start and end: W&B's service
    and matplotlib with a first figure. The vmap launcher calls it on a thread while its groups
    train; one thing after the other (see _prepare_figures)."""
    if wandb:
        start_service()
    if figures:
        try:
            from aeflax import figures as drawing

            drawing.warm_up()
        except Exception as err:  # noqa: BLE001 - only a head start: the figures load where they are drawn
            log.debug("preparing the figures failed: %s", err)


def unwritable(path: Path) -> Optional[str]:
    """Why `path` cannot be created and written into, or None (then it exists)."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is not a directory"
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        return err.strerror or str(err)
    return None


def check_writable(workdir: Path) -> None:
    """Fail before any work when the run directory cannot be created or written."""
    problem = unwritable(workdir)
    if problem:
        raise ConfigError(f"output directory {workdir} cannot be created or written ({problem}); "
                          "choose another one (hydra.run.dir=... or hydra.sweep.dir=...)")


def clear(workdir: Path) -> None:
    """fresh=true: delete the checkpoints, the record and the figures of an earlier run."""
    from aeflax import checkpoint, kept

    checkpoint.remove(workdir, checkpoint.DIRNAME)
    checkpoint.remove(workdir, checkpoint.BEST_DIRNAME)
    shutil.rmtree(workdir / "figures", ignore_errors=True)
    kept.remove(workdir)
    for name in (SUMMARY, METRICS, SETTINGS, TRAINED):
        (workdir / name).unlink(missing_ok=True)


def _trained_through(workdir: Path, last: Optional[int]) -> Optional[int]:
    """The last epoch of a training that ended in `workdir` before its evaluation finished (the
    last checkpoint is its kept state), or None: the run trains on from its last checkpoint."""
    path = workdir / TRAINED
    if last is None or not path.exists():
        return None
    try:
        marker = json.loads(path.read_text())
        epochs, kept_epoch = int(marker["epochs"]), int(marker["kept_epoch"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("%s is damaged (%s); training resumes from the checkpoint of epoch %d", path,
                    type(err).__name__, last)
        return None
    if kept_epoch != last:
        log.warning("%s kept epoch %d but the last checkpoint is of epoch %d; training resumes from it",
                    path, kept_epoch, last)
        return None
    return epochs


def read_previous_summary(workdir: Path) -> dict:
    """The earlier run's summary.json ({} if none); a damaged one stops the run, touching nothing."""
    path = workdir / SUMMARY
    if not path.exists():
        return {}
    previous = read_summary(workdir)
    if not isinstance(previous, dict):
        raise ConfigError(f"{path} is damaged ({_damage(path)}); nothing was changed: move it away to resume "
                          "the run from its checkpoints (under a new W&B run), or run again with fresh=true")
    return previous


def check_same_settings(workdir: Path, ours: dict) -> None:
    """A run directory holds one configuration: refuse to resume or skip a run of another.

    A field added since the run was recorded (a new part's) counts as its default there: new
    options are off by default, so adding a part does not orphan the run directories made before.
    """
    path = workdir / SETTINGS
    if not path.exists():
        return
    try:
        theirs = json.loads(path.read_text())
        if not isinstance(theirs, dict):
            raise ValueError(f"a JSON {type(theirs).__name__}, not an object")
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is damaged ({type(err).__name__}: {str(err)[:100]}); nothing was changed: "
                          "delete it to resume with this command's settings, or run again with fresh=true"
                          ) from None
    theirs = {**{k: v for k, v in settings(Config()).items() if k not in theirs}, **theirs}
    changed = [f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}" for k in sorted(set(ours) | set(theirs))
               if ours.get(k) != theirs.get(k)]
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise ConfigError(f"{workdir} holds a run with other settings ({shown}); run again with fresh=true "
                          "to replace it, or choose another output directory (hydra.run.dir=...)")


def _record_failure(record: RunRecord, summary: dict, err: BaseException, started: float,
                    tracker: Optional[BackgroundRun]) -> None:
    status = "interrupted" if isinstance(err, (Interrupted, KeyboardInterrupt)) else "failed"
    summary.update(status=status, error=_one_line(err), wall_seconds=time.time() - started)
    record.write_summary(summary)
    if tracker:
        tracker.summary({"status": status, "error": summary["error"]})
        tracker.finish(exit_code=1)


def _damage(path: Path) -> str:
    """What is wrong with a JSON file that cannot be read back, in a few words."""
    try:
        value = json.loads(path.read_bytes())
        return f"a JSON {type(value).__name__}, not an object"
    except (OSError, ValueError) as err:
        return f"{type(err).__name__}: {str(err)[:100]}"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"

