"""A sweep is one W&B workspace: a real 2-job sweep under the joblib launcher (2 workers)
writes every offline run into `<sweep>/wandb/`, read back with W&B's own reader
(`wandb leet inspect --json`) and shown by `wandb leet` itself, driven inside tmux. A resumed
job stays one W&B run (one folder, same id, its whole history) and a re-run adds none."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_cfg

from aeflax import tables
from aeflax.run import train_and_evaluate
from aeflax.tracking import read_metrics, read_summary, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "experiments" / "train.py")
WANDB = str(Path(sys.executable).parent / "wandb")
SWEEP = ["-m", "name=ws", "seed=0,1", "data.train_limit=300", "data.test_limit=100", "train.epochs=2",
         "train.batch_size=100", "train.checkpoint_every=1", "eval.figures=false", "logger=offline",
         "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def launch(cwd: Path) -> str:
    out = subprocess.run([sys.executable, TRAIN, *SWEEP], cwd=cwd, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("workspace")
    launch(cwd)
    return cwd / "multirun" / "ws"


def folders(sweep: Path) -> list[Path]:
    return sorted((sweep / "wandb").glob("offline-run-*"))


def folder_of(run: Path) -> Path:
    """The run's one W&B folder in its sweep's workspace: `offline-run-<time>-<id>`."""
    run_id = read_summary(run)["wandb_id"]
    (folder,) = [f for f in folders(run.parent) if f.name.endswith(f"-{run_id}")]
    return folder


def records(folder: Path) -> list[dict]:
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(folder)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def history(recs: list[dict]) -> dict[int, dict]:
    return {r["history"]["item"]["_step"]: r["history"]["item"] for r in recs if r["type"] == "history"}


def final_summary(recs: list[dict]) -> dict:
    final = {}
    for r in recs:
        if r["type"] == "summary":
            final.update(r["summary"].get("update", {}))
    return final


@pytest.mark.slow
def test_parallel_offline_runs_keep_their_config_history_and_summary(sweep):
    runs = tables.find_runs(sweep)
    assert len(runs) == 2 and len(folders(sweep)) == 2  # one workspace, one folder per job
    assert not any((run / "wandb").exists() for run in runs)
    group = (sweep / "wandb_group.txt").read_text().strip()
    for run in runs:
        summary, points, recs = read_summary(run), read_metrics(run), records(folder_of(run))
        (header,) = [r["run"] for r in recs if r["type"] == "run"]
        assert header["run_id"] == summary["wandb_id"] and header["display_name"] == run.name
        assert header["run_group"] == group
        config = header["config"]["update"]
        assert config["seed"] == summary["seed"] and config["data"]["train_limit"] == 300  # config columns
        assert f"seed={summary['seed']}" in config["overrides"]
        by_epoch = {}  # metrics.jsonl merged per W&B step (the epoch)
        for point in points:
            by_epoch.setdefault(point["epoch"], {}).update({k: v for k, v in point.items() if "/" in k})
        logged = history(recs)
        assert sorted(logged) == [1, 2] and all(logged[e]["epoch"] == e for e in (1, 2))
        assert {e: {k: logged[e][k] for k in m} for e, m in by_epoch.items()} == by_epoch
        final = final_summary(recs)
        assert final["status"] == "finished" and final["test/mse"] == summary["test/mse"]
        assert final["best/test/loss"] == min(p["test/loss"] for p in points if "test/loss" in p)
        step_metrics = [r["metric"] for r in recs if r["type"] == "metric"]
        assert any(m.get("glob_name") == "*" and m.get("step_metric") == "epoch" for m in step_metrics)


@pytest.mark.slow
def test_wandb_leet_lists_every_run_of_the_sweep_in_tmux(sweep):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed: this test drives `wandb leet` in a tmux pane")
    ids = [read_summary(run)["wandb_id"] for run in tables.find_runs(sweep)]
    server = ["tmux", "-L", f"aeflax-test-{os.getpid()}"]
    subprocess.run([*server, "new-session", "-d", "-s", "leet", "-x", "220", "-y", "30",
                    f"{WANDB} leet {sweep / 'wandb'}"], check=True, env=ENV)
    try:
        screen = wait_for(server, "Runs [2 items]")
        listed = run_list(screen)  # each run listed under the overrides the sweep varies
        assert all("offline-run-" in line for line in listed) and len(listed) == 2, screen
        assert any("seed=0+" in line for line in listed) and any("seed=1+" in line for line in listed), screen
        assert all(run_id.startswith("seed=") for run_id in ids), ids  # the folder ends in the readable id
        subprocess.run([*server, "send-keys", "-t", "leet", "f"], check=True)
        subprocess.run([*server, "send-keys", "-t", "leet", "-l", "seed=1,"], check=True)
        subprocess.run([*server, "send-keys", "-t", "leet", "Enter"], check=True)
        screen = wait_for(server, "[1 filtered from 2 total]")  # found by its name: the overrides
        listed = run_list(screen)
        assert len(listed) == 1 and "seed=1+" in listed[0], screen
    finally:
        subprocess.run([*server, "kill-server"], check=False)


def run_list(screen: str) -> list[str]:
    """The rows of leet's runs list: the left column of the screen, one row per listed run."""
    rows = [line.split("│")[0].strip() for line in screen.splitlines()]
    return [row for row in rows if row[:1] in ("▶", "○", "●") and "offline-run-" in row]


def wait_for(server: list[str], text: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while True:
        screen = subprocess.run([*server, "capture-pane", "-p", "-t", "leet"], capture_output=True,
                                text=True).stdout
        if text in screen or time.time() > deadline:
            assert text in screen, screen
            return screen
        time.sleep(0.5)


@pytest.mark.slow
def test_the_sweep_table_is_one_wandb_run_of_the_workspace(sweep):
    make_table = [sys.executable, str(ROOT / "scripts" / "make_table.py"), str(sweep), "--metric", "test/mse",
                  "--log-wandb"]
    for _ in range(2):  # logging again replaces the table
        subprocess.run(make_table, env=ENV, capture_output=True, check=True, timeout=300)
    (table,) = [f for f in folders(sweep) if "-table" in f.name]
    (runs,) = (table / "files" / "media" / "table").glob("runs_*.table.json")
    rows = json.loads(runs.read_text())
    assert rows["columns"] == ["run", "seed", "status", "test/mse"] and len(rows["data"]) == 2
    mse = {row[0]: row[3] for row in rows["data"]}
    assert mse == {run.name: read_summary(run)["test/mse"] for run in tables.find_runs(sweep)}
    shutil.rmtree(table)  # the workspace holds the jobs' runs again (for the next test)


@pytest.mark.slow
def test_a_resumed_job_stays_one_wandb_run_and_a_rerun_adds_none(sweep):
    runs = tables.find_runs(sweep)
    killed = next(r for r in runs if "seed=1," in r.name)
    done = next(r for r in runs if r != killed)
    before = {f.name: f.stat().st_mtime_ns for f in folders(sweep)}
    summary = read_summary(killed)
    write_json_atomic(killed / "summary.json", {**summary, "status": "running"})  # as if killed in epoch 2
    shutil.rmtree(killed / "checkpoints" / "2")
    launch(sweep.parent.parent)  # the same command again
    resumed = read_summary(killed)
    assert resumed["status"] == "finished" and resumed["resumed_from_epoch"] == 1
    assert resumed["wandb_id"] == summary["wandb_id"] and resumed["test/mse"] == summary["test/mse"]
    assert len(folders(sweep)) == 2  # no duplicate: the resumed run's new folder replaced its old one
    untouched = folder_of(done)
    assert untouched.name in before and untouched.stat().st_mtime_ns == before[untouched.name]
    recs = records(folder_of(killed))
    assert folder_of(killed).name not in before
    assert sorted(history(recs)) == [1, 2]  # epoch 1 logged again from metrics.jsonl, epoch 2 trained
    assert history(recs)[1]["test/loss"] == read_metrics(killed)[0]["test/loss"]
    assert final_summary(recs)["test/mse"] == resumed["test/mse"]


def test_a_single_run_keeps_its_own_wandb_folder_and_logs_checkpoints_when_asked(tmp_path):
    cfg = make_cfg("logger.mode=offline", "logger.log_checkpoints=true", "train.epochs=1",
                   "data.train_limit=300", "data.test_limit=100", "train.batch_size=100")
    summary = train_and_evaluate(cfg, tmp_path, progress=False)
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    assert folder.name.endswith(f"-{summary['wandb_id']}")  # as before: no suffix
    recs = records(folder)
    (artifact,) = [r["artifact"] for r in recs if r["type"] == "artifact"]
    assert artifact["type"] == "model" and artifact["name"] == f"checkpoints-{summary['wandb_id']}"
    assert final_summary(recs)["test/mse"] == summary["test/mse"]


@pytest.mark.slow
def test_an_early_stopped_runs_evaluation_and_figures_reach_wandb_at_its_kept_epoch(tmp_path):
    """W&B drops a point logged below its highest step: the evaluation of the kept (best) epoch,
    logged after the later epochs, goes one step after the last, its `epoch` the kept one."""
    cfg = make_cfg("logger.mode=offline", "eval.figures=true", "train.epochs=12", "train.batch_size=32",
                   "data.val_size=500", "data.train_limit=1500", "data.test_limit=200",
                   "train.early_stopping_patience=2", "optimizer.learning_rate=0.05")
    summary = train_and_evaluate(cfg, tmp_path, progress=False)
    last = max(p["epoch"] for p in read_metrics(tmp_path) if "train/loss" in p)
    assert summary["epochs"] < last  # stopped early: the kept epoch is an earlier one
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    logged = history(records(folder))
    assert sorted(logged) == list(range(1, last + 2))
    evaluation = logged[last + 1]
    assert evaluation["epoch"] == summary["epochs"]
    assert evaluation["time/eval_seconds"] == summary["time/eval_seconds"]
    assert {"figures/reconstructions._type", "figures/samples._type"} <= set(evaluation)  # the images
