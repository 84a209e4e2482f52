"""Train one autoencoder: `python experiments/train.py [overrides]` (`-m` for sweeps).

Hydra composes conf/ and hands the config to aeflax.run.train_and_evaluate; the run
directory is Hydra's output directory. User errors end with one line and exit code 1
(in a multirun the failed job is recorded and the sweep goes on).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from experiments.schema import register  # noqa: E402

register()

USER_ERRORS = ("ConfigError", "DataError", "CheckpointError", "NonFiniteLoss", "RunLocked")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    from aeflax.run import train_and_evaluate

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    group = cfg.logger.group or (f"{cfg.name}-{Path(hc.sweep.dir).name}" if multirun else None)
    try:
        summary = train_and_evaluate(cfg, hc.runtime.output_dir, group=group,
                                     config_dict=OmegaConf.to_container(cfg, resolve=True))
    except Exception as err:
        if type(err).__name__ not in USER_ERRORS:
            raise
        print(f"error: {err}", file=sys.stderr)
        if multirun:
            return None
        sys.exit(1)
    metric = "test/loss"
    print(f"{hc.runtime.output_dir}: {metric} = {summary.get(metric):.6g}, "
          f"test/mse = {summary.get('test/mse'):.6g}, wall {summary['wall_seconds']:.1f} s")
    return summary.get(metric)


if __name__ == "__main__":
    main()
