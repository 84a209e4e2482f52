"""The run record (summary.json, metrics.jsonl) and the W&B run, under one interface.

The local record is the source of truth: tables and resumption read it, so it is written
atomically (summary.json via a temporary file and rename; metrics.jsonl one flushed line
per point; a line cut short by a kill is dropped on reading). W&B mirrors it under the
same metric names; any W&B failure becomes one warning and training goes on. A lock file
keeps a second process out of a run directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import urlparse

if TYPE_CHECKING:
    from aeflax.config import LoggerConfig

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
TRAINED = "trained.json"  # between the end of a run's training and the end of its evaluation (run.py)
LOCK = ".lock"
log = logging.getLogger(__name__)


class RunLocked(RuntimeError):
    """Another live process holds the run directory."""


def write_json_atomic(path: Path, obj: Any) -> None:
    """Readers see the old file or the new one, never half of one (temporary file + rename)."""
    path = Path(path)
    text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable)  # fails before touching files
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def read_summary(run_dir: str | Path) -> Optional[dict]:
    """summary.json, or None when it is missing or damaged (not a JSON object)."""
    path = Path(run_dir) / SUMMARY
    try:
        summary = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The logged points; a line cut short by a kill (no newline, not JSON) is dropped, and any
    other damaged line is named in a warning and dropped."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    points = []
    lines = path.read_bytes().decode(errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            point = json.loads(line)
            if not isinstance(point, dict) or not isinstance(point.get("epoch", 0), int):
                raise ValueError("not a metrics point")
            points.append(point)
        except ValueError:
            if number < len(lines):  # the last line may be one cut short by a kill: expected
                log.warning("%s: line %d is damaged and left out (%.60r)", path, number, line)
    return points


class RunLock:
    """An exclusive fcntl lock on `<run_dir>/.lock`: one process per run directory.

    The kernel drops the lock when its process dies (even by kill -9), so a stale lock
    file never blocks a resume, and `held` tells a live run from a dead one.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.fd: Optional[int] = None

    @staticmethod
    def held(run_dir) -> Optional[bool]:
        """Whether a live process holds the run directory; None when it has no lock file."""
        try:
            fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # taken for an instant, never blocking a run
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for attempt in range(20):  # `held` (a table being made) takes the lock for an instant
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 19:
                        raise
                    time.sleep(0.01)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLocked(f"another process (pid {holder}) is running in {self.path.parent}; wait for it "
                            "to end or choose another output directory (hydra.run.dir=...)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


class RunRecord:
    """summary.json + metrics.jsonl in a run directory."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS

    def log(self, metrics: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(_clean(metrics), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, epoch: int) -> None:
        """Keep the points up to and including the first one of `epoch` (the epoch's own point).

        A resumed run logs again what came later: the epochs after its checkpoint and the
        end-of-run evaluation. Cut-short lines go too.
        """
        kept = []
        for point in read_metrics(self.run_dir):
            if point.get("epoch", 0) > epoch:
                break
            kept.append(point)
            if point.get("epoch", 0) == epoch:
                break
        tmp = self.metrics_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write("".join(json.dumps(m, sort_keys=True) + "\n" for m in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.metrics_path)

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.run_dir / SUMMARY, _clean(summary))


RESERVED_ID_CHARS = ":;,#?/' "  # W&B refuses these in a run id (wandb.Settings.validate_run_id)


def readable_id(name: str, first: Sequence[str] = (), length: int = 40) -> str:
    """A new run id that says the job's overrides: `cs=8+seed=1-k3x9q2` for the job
    `bottleneck.code_size=8,seed=1` (each key's last part, its initials when it has several
    words, `+` between them, the keys in `first` (what the sweep varies) leading, a random
    tail that keeps it unique in the project). `wandb leet` lists a workspace's runs by their
    folders, `offline-run-<time>-<id>`, in a column that shows about 16 characters of the id:
    short keys leave room for the values that tell the runs apart."""
    import secrets

    items: list[tuple[str, str]] = []
    for token in name.split(","):  # Hydra's override_dirname: key=value,key=value
        if "=" in token or not items:
            key, _, value = token.partition("=")
            items.append((key, f"{_short(key)}={value}" if value else key))
        else:
            items[-1] = (items[-1][0], f"{items[-1][1]}+{token}")  # a value that held a comma ([16,8])
    items.sort(key=lambda item: item[0] not in first)  # stable: the swept keys first, in their order
    slug = "+".join(text for _, text in items)
    slug = "".join("_" if c in RESERVED_ID_CHARS else c for c in slug)[:length].strip("+_")
    tail = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(6))
    return f"{slug}-{tail}" if slug else tail


def new_run_id(logger_cfg: LoggerConfig, run_dir: str | Path, name: str) -> Optional[str]:
    """The id of a new W&B run, chosen before W&B starts (None with W&B disabled): summary.json
    keeps it from the first epoch on, so a run killed while W&B starts in the background still
    resumes into this run. In a sweep's shared workspace `readable_id`, else the 8 lower-case
    letters and digits `wandb.init` would draw itself."""
    if logger_cfg.mode == "disabled":
        return None
    wandb_dir = Path(getattr(logger_cfg, "dir", None) or run_dir)
    if wandb_dir.resolve() != Path(run_dir).resolve():
        return readable_id(name, first=swept_keys(wandb_dir))
    import secrets

    return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))


def _short(key: str) -> str:
    """`bottleneck.code_size` -> `cs`, `seed` -> `seed`."""
    last = key.rsplit(".", 1)[-1]
    return "".join(word[0] for word in last.split("_") if word) if "_" in last else last


def swept_keys(sweep_dir: Path) -> list[str]:
    """The keys a multirun varies (its multirun.yaml), or none."""
    from aeflax.sweep_plan import planned_values

    try:
        return list(planned_values(sweep_dir))
    except Exception:  # noqa: BLE001 - only the order of a name depends on it
        return []


class WandbRun:
    """A W&B run that never stops training: failures become one warning and a no-op.

    `run_id` (kept in summary.json) resumes the same W&B run after a crash, offline too;
    `new_id` names a new run (`new_run_id`; by default W&B or `readable_id` draws it).
    W&B writes into `<logger.dir or run_dir>/wandb/`; a multirun sets logger.dir to its sweep
    directory, so the sweep is one folder that `wandb leet` shows as one workspace: each run
    is named by its directory (the job's overrides: leet's filter finds runs by them) and a new
    run's id says them too (`readable_id`), as leet lists runs by folder, which ends in the id.
    """

    # per-epoch losses whose minimum W&B keeps in the summary while training (define_metric)
    BEST = ("val/loss", "test/loss")

    def __init__(self, logger_cfg: LoggerConfig, run_dir: str | Path, config: dict, name: str,
                 group: Optional[str], run_id: Optional[str] = None, new_id: Optional[str] = None):
        self.run = None
        self.run_dir = Path(run_dir)
        self.wandb_dir = Path(getattr(logger_cfg, "dir", None) or run_dir)
        self.shared = self.wandb_dir.resolve() != self.run_dir.resolve()  # a sweep's workspace
        self.log_checkpoints = bool(getattr(logger_cfg, "log_checkpoints", False))
        self.resumed = run_id is not None
        self.best: dict[str, float] = {}
        self.top_step = -1  # the highest step logged (see `_placed`)
        if logger_cfg.mode == "disabled":
            return
        try:
            import wandb

            _list_packages_once(wandb)
            _no_pandas_import(wandb)
            if logger_cfg.mode == "online":
                check_online(os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url)
            self.wandb_dir.mkdir(parents=True, exist_ok=True)
            if run_id is None and self.shared:  # leet lists a workspace by its folders, ending in the id
                run_id = new_id or readable_id(name, first=swept_keys(self.wandb_dir))
            self.run = _init_when_free(
                wandb, project=logger_cfg.project, entity=logger_cfg.entity, group=group,
                job_type=logger_cfg.job_type, tags=list(logger_cfg.tags), name=name, config=config,
                dir=str(self.wandb_dir), mode=logger_cfg.mode, id=run_id or new_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(console="off", silent=True, init_timeout=60))
            self.run.define_metric("epoch")
            self.run.define_metric("*", step_metric="epoch")  # per-epoch curves over the epoch
            for key in self.BEST:
                self.run.define_metric(key, step_metric="epoch", summary="min")
        except Exception as err:  # noqa: BLE001 - tracking must never lose a run
            text = " ".join(str(err).split())[:300]
            log.warning("W&B is off for this run (%s: %s); training goes on and the local record in %s is "
                        "still written", type(err).__name__, text, run_dir)
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
            log.warning("W&B logging failed (%s: %s); continuing without W&B", type(err).__name__, err)
            self.run = None

    def _placed(self, metrics: dict, step: Optional[int]) -> tuple[dict, Optional[int]]:
        """W&B drops a point logged below its highest step: the evaluation of an early-stopped
        run's kept (earlier) epoch goes one step after the last epoch, its `epoch` value placing
        it on the curves, which are drawn over the epoch."""
        if step is None:
            return metrics, None
        if step >= self.top_step:
            self.top_step = step
            return metrics, step
        return {"epoch": step, **metrics}, self.top_step + 1

    def log(self, metrics: dict, step: Optional[int] = None) -> None:
        for key in self.BEST:
            value = metrics.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.best[key] = min(value, self.best.get(key, math.inf))
        metrics, step = self._placed(metrics, step)
        self._call(lambda: self.run.log(metrics, step=step))

    def continue_from(self, points: list[dict]) -> None:
        """In a shared workspace, make this W&B folder the whole run: offline, a resumed run starts
        a new folder, so the points logged before the checkpoint (the record's `points`) are logged
        again into it and the older folders of this run are removed. The workspace then lists
        each run once and `wandb sync` uploads it once. Online, W&B continues the run on its
        server itself; a run with its own wandb/ folder keeps its folders as before."""
        if self.run is None or not self.shared or self.run.settings.mode != "offline":
            return
        if self.resumed:
            for point in points:
                self.log({k: _unclean(v) for k, v in point.items()}, step=point.get("epoch"))
        own = Path(self.run.settings.sync_dir).name
        for folder in (self.wandb_dir / "wandb").glob("offline-run-*"):
            if folder.name != own and folder.name.split("-", 3)[-1] == self.run.id:
                shutil.rmtree(folder, ignore_errors=True)

    def log_image(self, key: str, path: str | Path, step: Optional[int] = None) -> None:
        def log_one():
            import wandb

            self.run.log(*self._placed({key: wandb.Image(str(path))}, step))

        self._call(log_one)

    def summary(self, summary: dict) -> None:
        """The final metrics (as in summary.json) and the best per-epoch losses as best/<key>."""
        best = {f"best/{k}": v for k, v in self.best.items()}
        self._call(lambda: self.run.summary.update({**summary, **best}))

    def finish(self, exit_code: int = 0) -> None:
        if exit_code == 0 and self.log_checkpoints:
            self._call(self._log_checkpoints)
        self._call(lambda: self.run.finish(exit_code=exit_code))
        self.run = None

    def _log_checkpoints(self) -> None:
        """The run's checkpoints/ as a W&B model artifact (logger.log_checkpoints=true)."""
        import wandb

        from aeflax.checkpoint import DIRNAME

        artifact = wandb.Artifact(f"checkpoints-{self.run.id}", type="model",
                                  metadata={"run_dir": str(self.run_dir)})
        artifact.add_dir(str(self.run_dir / DIRNAME))
        self.run.log_artifact(artifact, aliases=["latest"])


def _init_when_free(wandb, seconds: float = 10.0, **kwargs):
    """`wandb.init(**kwargs)`, again for up to `seconds` while W&B's service still holds the run id
    for a process that was killed: a process started by one that used W&B shares its service
    (WANDB_SERVICE), which lets go of a dead process's run a moment after its death. The folder a
    refused start made (its debug logs) goes, so the workspace keeps one folder per attempt."""
    deadline = time.monotonic() + seconds
    folders = lambda: set((Path(kwargs["dir"]) / "wandb").glob(f"*run-*-{kwargs['id']}*"))  # noqa: E731
    while True:
        before = folders()
        try:
            return wandb.init(**kwargs)
        except Exception as err:  # noqa: BLE001 - W&B's own error types move between versions
            if "is in use" not in str(err) or time.monotonic() > deadline:
                raise
            for folder in folders() - before:
                shutil.rmtree(folder, ignore_errors=True)
            time.sleep(0.5)


class BackgroundRun:
    """A WandbRun started and driven on a thread of its own, so that `wandb.init` (imports and
    the wandb-core service: seconds) runs while the model trains. Every call is queued in order
    and returns at once; `started()` waits for W&B to start, `finish` for all that was queued.

    `start` makes the WandbRun (on that thread).
    """

    def __init__(self, start: Callable[[], WandbRun]):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="aeflax-wandb")
        self._closed = False  # finished: later calls are no-ops, as WandbRun's
        self._run = self._pool.submit(start)

    def started(self) -> None:
        """Wait until W&B has started (or failed to: then every call is a no-op)."""
        self._run.result()

    @property
    def id(self) -> Optional[str]:
        """The W&B run's id once started, None if W&B is off or failed to start (waits for it)."""
        return self._run.result().id

    def _queue(self, method: str, *args, **kwargs) -> None:
        if self._closed:
            return

        def call():
            try:
                getattr(self._run.result(), method)(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - tracking must never lose a run
                log.warning("W&B %s failed (%s: %s); the local record is still written", method,
                            type(err).__name__, err)

        self._pool.submit(call)

    def log(self, metrics: dict, step: Optional[int] = None) -> None:
        self._queue("log", dict(metrics), step=step)

    def continue_from(self, points: list[dict]) -> None:
        self._queue("continue_from", points)

    def log_image(self, key: str, path: str | Path, step: Optional[int] = None) -> None:
        self._queue("log_image", key, path, step=step)

    def summary(self, summary: dict) -> None:
        self._queue("summary", dict(summary))

    def finish(self, exit_code: int = 0) -> None:
        """Finish the W&B run once everything queued is done; returns when it is."""
        self._queue("finish", exit_code=exit_code)
        self._closed = True
        self._pool.shutdown(wait=True)


def _unclean(value):
    """The inverse of _clean for replay: NaN/Inf strings back to floats."""
    return float(value) if value in ("nan", "inf", "-inf") else value


def start_service() -> None:
    """Import W&B and start its service (wandb.setup), what the first W&B run of a process otherwise
    waits for (about 1.5 s): the vmap launcher does it while its groups train."""
    try:
        import wandb

        _list_packages_once(wandb)
        wandb.setup()
    except Exception as err:  # noqa: BLE001 - only a head start: each run's wandb.init says what fails
        log.debug("W&B's service did not start ahead: %s", err)


def _no_pandas_import(wandb) -> None:
    """W&B asks of every value it logs other than a number or a string (our figures) whether it is
    a pandas DataFrame, by importing pandas where pandas is installed: seconds of CPU beside the
    training, in every process that logs a figure. With `pd_available` off it reads the value's
    type name instead (`pandas.*DataFrame`), which gives the same answer without the import."""
    util = getattr(wandb, "util", None)
    if util is not None and hasattr(util, "pd_available"):
        util.pd_available = False


def _list_packages_once(wandb) -> None:
    """W&B records the installed packages at every `wandb.init` (0.2 s each here); they do not
    change within a process, so the jobs of a multirun list them once."""
    try:
        util = wandb.util
        if getattr(util.working_set, "aeflax_cached", False):
            return
        packages = list(util.working_set())
        cached = lambda: iter(packages)  # noqa: E731
        cached.aeflax_cached = True
        util.working_set = cached
    except Exception:  # noqa: BLE001 - only a speed-up; W&B lists them itself otherwise
        pass


def check_online(base_url: str, timeout: float = 3.0) -> None:
    """Fail in seconds, with advice, where wandb.init would wait for its timeout."""
    host = urlparse(base_url).hostname or base_url
    if not (os.environ.get("WANDB_API_KEY") or _has_netrc(host)):
        raise RuntimeError("logger.mode=online needs an API key (wandb login or WANDB_API_KEY); "
                           "use logger=offline and `wandb sync` later")
    try:
        socket.create_connection((host, urlparse(base_url).port or 443), timeout=timeout).close()
    except OSError as err:
        raise RuntimeError(f"cannot reach {base_url} ({err}); use logger=offline here and run "
                           "`wandb sync <run dir>/wandb/offline-run-*` from a machine with network") from None


def _has_netrc(host: str) -> bool:
    netrc = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    return netrc.exists() and host in netrc.read_text()
