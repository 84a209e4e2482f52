"""Hydra sweeps end to end: real tiny sweeps (2 code sizes x 2 seeds, one epoch, 256 images)
with the basic and the joblib launcher, their offline W&B runs and tables, a re-run that skips
finished jobs, submitit's local executor, an Optuna search, and every sweep file's jobs."""

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Transformer

from aeflax import tables
from aeflax.config import validate
from aeflax.tracking import read_metrics, read_summary
from experiments.schema import register

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "experiments" / "train.py")
WANDB = str(Path(sys.executable).parent / "wandb")
TINY = ["data.train_limit=256", "data.test_limit=128", "train.epochs=1", "train.batch_size=128",
        "eval.figures=false", "eval.reconstruction=false"]
GRID = ["bottleneck.code_size=4,8", "seed=0,1", *TINY, "logger=offline"]
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
       # the jobs share compiled programs through JAX's persistent cache (set per module below)
       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}

register()


def launch(cwd: Path, *overrides: str, wait: bool = True):
    proc = subprocess.Popen([sys.executable, TRAIN, "-m", *overrides], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return finish(proc) if wait else proc


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


OPTUNA = ["hparams_search=optuna", "name=opt", "bottleneck.code_size=8", *TINY, "logger=disabled",
          "hydra.sweeper.n_trials=2", "hydra.sweeper.storage=sqlite:///optuna.db"]
SUBMITIT = ["name=sub", "bottleneck.code_size=4", "seed=3", *TINY, "logger=disabled",
            "hydra/launcher=submitit_local"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The same 2x2 sweep with the basic and the joblib launcher, a submitit job and an Optuna
    search, once for the module: the basic sweep first (it fills the compilation cache), then
    the others side by side."""
    cwd = tmp_path_factory.mktemp("sweeps")
    ENV["JAX_COMPILATION_CACHE_DIR"] = str(cwd / "jax_cache")
    launch(cwd, "name=basic", *GRID)
    procs = [launch(cwd, *args, wait=False) for args in (["name=joblib", *JOBLIB, *GRID], SUBMITIT, OPTUNA)]
    for proc in procs:
        finish(proc)
    return {name: cwd / "multirun" / name for name in ("basic", "joblib", "sub", "optuna_opt")} | {"cwd": cwd}


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of a run's offline .wandb log (in its sweep's workspace, <sweep>/wandb), through
    `wandb leet inspect --json`."""
    run_id = read_summary(run_dir)["wandb_id"]
    (log,) = run_dir.parent.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(log)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def job_of(run_dir: Path) -> tuple[int, int]:
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    return cfg["bottleneck"]["code_size"], cfg["seed"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_each_job_is_a_run_dir_and_an_offline_wandb_run_in_the_sweeps_group(sweeps, launcher):
    sweep = sweeps[launcher]
    runs = tables.find_runs(sweep)
    assert sorted(job_of(r) for r in runs) == [(4, 0), (4, 1), (8, 0), (8, 1)]
    for run in runs:  # stable names: the job's own overrides, the sweep's name aside
        code, seed = job_of(run)
        assert run.name == (f"bottleneck.code_size={code},data.test_limit=128,data.train_limit=256,"
                            f"eval.reconstruction=False,seed={seed},train.batch_size=128,train.epochs=1")
    group = (sweep / "wandb_group.txt").read_text().strip()
    assert group.startswith(f"{launcher}-20")
    with ThreadPoolExecutor(4) as pool:
        logs = dict(zip(runs, pool.map(wandb_records, runs), strict=True))
    for run, records in logs.items():
        summary, points = read_summary(run), read_metrics(run)
        assert summary["status"] == "finished" and points[0]["epoch"] == 1
        (header,) = [r["run"] for r in records if r["type"] == "run"]
        assert header["run_group"] == group and header["display_name"] == run.name
        assert {launcher, "sweep"} <= set(header["tags"])
        config = json.loads(json.dumps(header["config"]["update"]))
        assert (config["bottleneck"]["code_size"], config["seed"]) == job_of(run)  # swept: config columns
        assert "seed=" + str(config["seed"]) in config["overrides"]
        history = {r["history"]["item"]["_step"]: r["history"]["item"] for r in records
                   if r["type"] == "history"}
        by_epoch = {}  # metrics.jsonl's points, merged per W&B step (the epoch)
        for point in points:
            by_epoch.setdefault(point["epoch"], {}).update({k: v for k, v in point.items() if "/" in k})
        assert {e: {k: history[e][k] for k in m} for e, m in by_epoch.items()} == by_epoch  # names, values
        final = {}
        for r in records:
            if r["type"] == "summary":
                final.update(r["summary"].get("update", {}))
        assert final["test/mse"] == summary["test/mse"] and final["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_the_table_cells_equal_the_summaries(sweeps, launcher, tmp_path):
    sweep = sweeps[launcher]
    summaries = {job_of(r): read_summary(r)["test/mse"] for r in tables.find_runs(sweep)}
    csv = tmp_path / "t.csv"
    assert make_table.main([str(sweep), "--rows", "bottleneck.code_size", "--cols", "seed", "--format", "csv",
                            "--out", str(csv)]) == 0
    cells = pd.read_csv(csv)
    assert len(cells) == 4 and (cells["n"] == 1).all()
    for _, cell in cells.iterrows():
        assert cell["mean"] == summaries[(cell["bottleneck.code_size"], cell["seed"])]
    runs = tables.load_runs([sweep])
    assert tables.swept_keys(runs) == ["bottleneck.code_size", "seed"]
    agg = tables.aggregate(runs, ["bottleneck.code_size"], "test/mse").set_index("bottleneck.code_size")
    for code in (4, 8):
        a, b = summaries[(code, 0)], summaries[(code, 1)]
        assert agg.loc[code, "mean"] == pytest.approx((a + b) / 2, rel=1e-12)
        assert agg.loc[code, "std"] == pytest.approx(abs(a - b) / 2 ** 0.5, rel=1e-9)


@pytest.mark.slow
def test_a_rerun_skips_finished_jobs_and_reruns_a_deleted_one(sweeps):
    sweep = sweeps["joblib"]
    hydra_own = lambda p: ".hydra" in p.parts or p.suffix == ".log" or p.name == ".lock"  # noqa: E731
    record = lambda run: {p: p.stat().st_mtime_ns for p in run.rglob("*")  # noqa: E731
                          if p.is_file() and not hydra_own(p)}
    runs = tables.find_runs(sweep)
    before = {run: record(run) for run in runs}
    group = (sweep / "wandb_group.txt").read_text()
    deleted = next(r for r in runs if job_of(r) == (8, 1))
    old_summary = read_summary(deleted)
    subprocess.run(["rm", "-rf", str(deleted)], check=True)
    out = launch(sweeps["cwd"], "name=joblib", *JOBLIB, *GRID)  # the very same command
    assert out.count("test/mse =") == 4  # every job answers, from its record or by training
    for run in runs:
        if run == deleted:
            continue
        assert record(run) == before[run], f"{run} was touched"
    summary = read_summary(deleted)
    assert summary["status"] == "finished" and summary["test/mse"] == old_summary["test/mse"]  # same seed
    assert summary["wandb_id"] != old_summary["wandb_id"]  # trained again: a new W&B run ...
    (header,) = [r["run"] for r in wandb_records(deleted) if r["type"] == "run"]
    assert header["run_group"] == group.strip()  # ... in the sweep's first group
    assert (sweep / "wandb_group.txt").read_text() == group


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_jobs(sweeps):
    (run,) = tables.find_runs(sweeps["sub"])
    assert run.name.endswith("seed=3,train.batch_size=128,train.epochs=1")
    assert read_summary(run)["status"] == "finished" and read_summary(run)["seed"] == 3
    assert list((sweeps["sub"] / ".submitit").glob("*/*_result.pkl"))


def test_slurm_launcher_config_composes():
    cfg = _compose(["hydra/launcher=slurm", "experiment=sweep_latent"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1
    assert launcher.submitit_folder == "multirun/sweep_latent/.submitit/%j"


@pytest.mark.slow
def test_optuna_search_runs_trials_and_reports_the_best(sweeps):
    sweep = sweeps["optuna_opt"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = [read_summary(r)["test/mse"] for r in tables.find_runs(sweep)]
    assert len(values) == 2 and results["best_value"] == min(values)  # objective: test/mse
    assert (sweeps["cwd"] / "optuna.db").stat().st_size > 0  # the pinned SQLAlchemy storage works


def _compose(overrides, hydra=False):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=hydra)


def _compose_all(jobs):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        yield from (compose(config_name="config", overrides=job) for job in jobs)


EXPERIMENTS = {p.stem: yaml.safe_load(p.read_text())
               for p in sorted((ROOT / "conf" / "experiment").glob("*.yaml"))}
# every experiment file that is a multirun: the sweeps, the multirun reproductions, anomaly_sweep
MULTIRUN_FILES = [name for name, body in EXPERIMENTS.items()
                  if (body.get("hydra") or {}).get("mode") == "MULTIRUN"]
SWEEP_FILES = [name for name in MULTIRUN_FILES if name.startswith("sweep_") or name == "repro_probe"]


@pytest.mark.slow  # hundreds of compositions; test_configs composes every file once
@pytest.mark.parametrize("name", MULTIRUN_FILES)
def test_every_job_of_a_multirun_file_composes_and_validates(name):
    params = _compose([f"experiment={name}"], hydra=True).hydra.sweeper.params
    if name in SWEEP_FILES:
        assert "seed" in params and len(str(params.seed).split(",")) == 3  # every sweep: 3 seeds
    axes = []
    for key, values in params.items():
        if key != "seed":
            override = OverridesParser.create().parse_override(f"{key}={values}")
            axes.append([f"{key}={v}" for v in override.sweep_iterator(transformer=Transformer.str)])
    for cfg in _compose_all([f"experiment={name}", *job] for job in itertools.product(*axes)):
        validate(cfg)
        assert cfg.name == name  # the sweep's name (its directory and W&B group), not the variant's


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_table = _script("make_table")
