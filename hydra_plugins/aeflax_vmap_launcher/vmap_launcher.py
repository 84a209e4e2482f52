"""`hydra/launcher=vmap`: a multirun whose jobs share a program trains as one `jax.vmap`.

The jobs are composed first, grouped by `aeflax.vmap_sweep.group_key` (everything but the
seed and the traced hyperparameters in `hp`), and each group with more than one member is
trained as one compiled program. Then every job runs exactly as under the basic launcher
(its own output directory, `.hydra/`, summary.json, metrics.jsonl, figures, checkpoints,
W&B run), except that the task function receives the job's trained result as its
`trained` argument, so its run records it instead of training again. Jobs that fail
validation, or whose group fails, simply train alone.
"""

import functools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class VmapLauncherConf:
    _target_: str = "hydra_plugins.aeflax_vmap_launcher.vmap_launcher.VmapLauncher"
    progress: bool = True  # a progress bar per group
    chunk: Optional[int] = None  # members side by side in one vmap; null: 2 on CPU, all elsewhere


ConfigStore.instance().store(group="hydra/launcher", name="vmap", node=VmapLauncherConf, provider="aeflax")


class VmapLauncher(Launcher):
    def __init__(self, progress: bool = True, chunk: Optional[int] = None) -> None:
        self.progress, self.chunk = progress, chunk
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from aeflax import runtime

        runtime.configure()  # this process trains the groups: before its first JAX computation
        from aeflax import run, vmap_sweep
        from aeflax.config import validate

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        sweep_configs, task_configs = [], []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            task_config = sweep_config.copy()
            with open_dict(task_config):
                del task_config["hydra"]
            sweep_configs.append(sweep_config)
            task_configs.append(task_config)

        valid = [i for i, c in enumerate(task_configs) if _valid(validate, c)]
        groups = [[valid[j] for j in g] for g in vmap_sweep.group_configs([task_configs[i] for i in valid])]
        groups += [[i] for i in range(len(task_configs)) if i not in valid]
        log.info(f"Launching {len(job_overrides)} jobs as {len(groups)} programs")
        ahead = threading.Thread(target=run.prepare, daemon=True, kwargs=dict(  # while the groups train
            wandb=any(c.logger.mode != "disabled" for c in task_configs),
            figures=any(c.eval.figures for c in task_configs)))
        ahead.start()
        runs: dict[int, JobReturn] = {}
        for members in groups:
            trained = [None] * len(members)
            if len(members) > 1:
                try:
                    trained = vmap_sweep.train_group([task_configs[i] for i in members],
                                                     progress=self.progress, chunk=self.chunk)
                except Exception as err:  # noqa: BLE001 - the members then train alone and report it
                    log.warning(f"jobs {members} could not train as one program "
                                f"({type(err).__name__}: {err}); training them one by one")
            ahead.join()  # before the first job: its W&B start would parse source beside it (run.prepare)
            for i, result in zip(members, trained, strict=True):
                task = functools.partial(self.task_function, trained=result) if result else self.task_function
                runs[i] = run_job(hydra_context=self.hydra_context, task_function=task,
                                  config=sweep_configs[i], job_dir_key="hydra.sweep.dir",
                                  job_subdir_key="hydra.sweep.subdir")
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [runs[i] for i in range(len(job_overrides))]


def _valid(validate, cfg) -> bool:
    try:
        validate(cfg)
        return True
    except ValueError:
        return False
