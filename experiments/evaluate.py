"""Evaluate a saved run: `python experiments/evaluate.py RUN_DIR [eval=<option>] [key=value ...]`.

Loads the run's config (.hydra/config.yaml) and latest checkpoint, recomputes its test
metrics and the evaluations that `eval` asks for (the run's own eval config unless
`eval=<name>` picks conf/eval/<name>.yaml; `eval.x=y` and other `key=value` overrides
apply on top, e.g. `eval=likelihood eval.importance_samples=5000 data.test_limit=null`),
and writes them into the run's record under the same names: summary.json (merged),
one line of metrics.jsonl, figures/, and the run's W&B run (resumed by its id). A long pass
(k = 5000) stopped by a signal keeps its finished batches: the same command continues it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aeflax import runtime
from aeflax.config import Config, EvalConfig

CONF = Path(__file__).resolve().parent.parent / "conf"
USER_ERRORS = ("ConfigError", "DataError", "CheckpointError", "FileNotFoundError", "Interrupted")


def eval_option(name: str) -> EvalConfig:
    """conf/eval/<name>.yaml on top of the EvalConfig defaults, as Hydra composes the group."""
    path = CONF / "eval" / f"{name}.yaml"
    if not path.exists():
        options = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise FileNotFoundError(f"eval={name} is not an option; choose one of {options}")
    return OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.load(path))


def config(run_dir: Path, overrides: list[str]) -> Config:
    from aeflax import api
    from aeflax.config import validate

    cfg = api.load_config(run_dir)
    groups = [o for o in overrides if o.startswith("eval=")]
    for option in groups:
        cfg.eval = eval_option(option.split("=", 1)[1])
    cfg.merge_with_dotlist([o for o in overrides if o not in groups])
    validate(cfg)
    return cfg


def evaluate(run_dir: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Evaluate the run in `run_dir`; return the metrics written into its record."""
    runtime.configure()  # before the first JAX computation
    from aeflax import api, data, evaluation, kept, training
    from aeflax.run import Interrupted, StopSignals
    from aeflax.tracking import RunRecord, WandbRun, read_summary

    started = time.perf_counter()
    run_dir = Path(run_dir)
    cfg = config(run_dir, list(overrides))
    dataset = data.load(cfg.data)
    graphdef, state = api.restore(cfg, run_dir, dataset.image_shape)
    metrics = evaluation.test_metrics(cfg, graphdef, state, dataset.test)
    summary = read_summary(run_dir) or {}
    tracker = WandbRun(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True), name=run_dir.name,
                       group=cfg.logger.group, run_id=summary.get("wandb_id"))
    result = training.FitResult(graphdef, state, history=[])
    with StopSignals() as signals:
        try:
            metrics.update(evaluation.evaluate_run(cfg, result, dataset, run_dir, tracker, also_log=metrics,
                                                   stop=lambda: signals.signum is not None))
        except kept.Stopped as err:
            if tracker:
                tracker.finish(exit_code=1)
            raise Interrupted(signals.name, int(state.epoch), run_dir, str(err)) from None
    metrics["time/evaluate_seconds"] = time.perf_counter() - started
    summary.update(metrics)
    RunRecord(run_dir).write_summary(summary)
    if tracker:
        tracker.summary(metrics)
        tracker.finish()
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
                                         "options of eval=: " + ", ".join(
                                             sorted(p.stem for p in (CONF / "eval").glob("*.yaml")))))
    parser.add_argument("run_dir", type=Path, help="a run directory written by experiments/train.py")
    parser.add_argument("overrides", nargs="*", help="eval=<option> and key=value overrides")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate(args.run_dir, args.overrides)
    except Exception as err:
        if type(err).__name__ not in USER_ERRORS and not isinstance(err, OmegaConfBaseException):
            raise
        print(f"error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 1))
    shown = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()
             if not isinstance(v, list)}
    print(json.dumps(shown, indent=1, sort_keys=True))
    return metrics


if __name__ == "__main__":
    main()
