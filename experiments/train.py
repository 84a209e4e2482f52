"""Train one autoencoder: `python experiments/train.py [overrides]` (`-m` for sweeps).

Hydra composes conf/ and hands the config to aeflax.run.train_and_evaluate; the run
directory is Hydra's output directory. User errors end with one line and exit code 1
(in a multirun the failed job is recorded and the sweep goes on).

In a multirun every job is its own W&B run, grouped by sweep (the sweep's name and first
launch time, kept in the sweep directory so a re-run joins the same group) and tagged
with the experiment and variant; all of them write into `<sweep dir>/wandb/`, one folder
that `wandb leet` shows as one workspace. Job directories are stable (conf/config.yaml), so the
same command again skips finished jobs (run.py) and re-runs failed or missing ones.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from aeflax import runtime
from experiments.schema import register

register()

USER_ERRORS = ("ConfigError", "DataError", "CheckpointError", "NonFiniteLoss", "RunLocked", "Interrupted")
GROUP_FILE = "wandb_group.txt"


def sweep_group(sweep_dir: Path) -> str:
    """`<sweep name>-<first launch time>`, created once per sweep directory (atomically, so
    parallel jobs agree) and read back by every later job and re-run."""
    path = sweep_dir / GROUP_FILE
    if not path.exists():
        sweep_dir.mkdir(parents=True, exist_ok=True)
        tmp = sweep_dir / f".{GROUP_FILE}.{os.getpid()}"
        tmp.write_text(f"{sweep_dir.name}-{time.strftime('%Y-%m-%d_%H-%M-%S')}\n")
        try:
            os.link(tmp, path)  # fails if another job created it first: theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def wandb_identity(cfg: DictConfig, hc) -> tuple[str | None, list[str], dict]:
    """The W&B group, tags and config of this job: the chosen experiment/variant and the
    command-line overrides become config columns beside the resolved config."""
    choices = {k: hc.runtime.choices.get(k) for k in ("experiment", "variant", "hparams_search")}
    choices = {k: v for k, v in choices.items() if v}
    multirun = hc.mode == RunMode.MULTIRUN
    tracked = cfg.logger.mode != "disabled"
    group = cfg.logger.group or (sweep_group(Path(hc.sweep.dir)) if multirun and tracked else None)
    if multirun and cfg.logger.dir is None:  # the sweep is one W&B workspace: <sweep dir>/wandb
        cfg.logger.dir = str(hc.sweep.dir)
    tags = [*cfg.logger.tags, cfg.name, *choices.values(), *(["sweep"] if multirun else [])]
    tags = [t[:64] for t in dict.fromkeys(tags)]  # W&B's limit
    config = OmegaConf.to_container(cfg, resolve=True)
    config.update(choices, overrides=list(hc.overrides.task))
    config["logger"]["tags"] = tags
    return group, tags, config


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig, trained=None) -> float | None:
    """One job. `trained`: its training already done by the vmap launcher (a training.Trained)."""
    runtime.configure()  # here, not at import: a launcher's worker process runs only the task
    from aeflax.run import train_and_evaluate

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    group, tags, config = wandb_identity(cfg, hc)
    cfg.logger.tags = tags
    try:
        summary = train_and_evaluate(cfg, hc.runtime.output_dir, group=group, config_dict=config,
                                     trained=trained)
    except Exception as err:
        if type(err).__name__ not in USER_ERRORS:
            raise
        print(f"error: {err}", file=sys.stderr)
        if multirun and type(err).__name__ != "Interrupted":  # a stop signal stops the sweep too
            return None
        sys.exit(getattr(err, "exit_code", 1))
    if "process" in summary:  # another process of a multi-process run: process 0 reports
        return None
    shown = {k: summary.get(k) for k in dict.fromkeys([cfg.objective, "test/mse"])}
    print(f"{hc.runtime.output_dir}: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in shown.items())
          + f", wall {summary.get('wall_seconds', 0):.1f} s")
    value = summary.get(cfg.objective)
    return float(value) if isinstance(value, (int, float)) else math.nan  # what Optuna optimizes


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) else str(value)


def compose_each_job_once() -> None:
    """Hydra's sweepers compose each job's config to check a batch before they launch it, then the
    launcher composes it again (0.15-0.3 s a job here). The launcher now takes the config the
    check composed: the same master config and overrides, so the same config (the check drops
    its copy unused). Only the batch being launched is kept; a launcher that composes in other
    processes (joblib) composes there as before."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.plugins.sweeper import Sweeper

    compose, checked = ConfigLoaderImpl.load_sweep_config, {}

    def validate_batch_is_legal(self, batch) -> None:
        context = getattr(self, "hydra_context", None)  # as Sweeper.validate_batch_is_legal finds it
        loader = context.config_loader if context is not None else self.config_loader
        checked.clear()
        for overrides in batch:
            checked[id(loader), id(self.config), tuple(overrides)] = (
                self.config, compose(loader, master_config=self.config, sweep_overrides=list(overrides)))

    def load_sweep_config(self, master_config, sweep_overrides):
        master, config = checked.pop((id(self), id(master_config), tuple(sweep_overrides)), (None, None))
        if master is master_config:
            return config
        return compose(self, master_config, sweep_overrides)

    Sweeper.validate_batch_is_legal = validate_batch_is_legal
    ConfigLoaderImpl.load_sweep_config = load_sweep_config


def leave(code: int = 0) -> None:
    """End the process without the interpreter's teardown, once everything is written: with JAX,
    W&B and matplotlib loaded it frees thousands of modules one by one (1.3-1.5 s on 2 busy CPU
    cores). What a normal exit runs before the teardown still runs, in its order: threading's
    shutdown (its exit hooks, e.g. joblib's loky executor stopping its workers, then the wait for
    non-daemon threads), then the atexit handlers (logging's flush, W&B's service, temporary
    folders, multiprocessing joining its children: before loky's hook they waited forever)."""
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    compose_each_job_once()
    main()
    leave()
