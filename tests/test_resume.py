"""Resuming a run directory: kill -9 then the same command (the same W&B run, offline), finished
runs left alone, a corrupted checkpoint, fresh=true."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_cfg
from hydra import compose, initialize_config_dir

from aeflax import tracking
from aeflax.checkpoint import CheckpointError
from aeflax.config import ConfigError
from aeflax.run import train_and_evaluate
from experiments.schema import register

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = ["data.train_limit=2000", "data.test_limit=300", "train.epochs=4", "train.batch_size=40",
             "logger=offline", "eval.figures=false", "eval.reconstruction=false"]
TINY = ["data.train_limit=400", "data.test_limit=100", "train.batch_size=100", "eval.reconstruction=false"]


def stable(points):
    """Strip what differs between identical runs (timings, where it resumed from)."""
    drop = lambda k: "seconds" in k or k == "resumed_from_epoch"  # noqa: E731
    return [{k: v for k, v in p.items() if not drop(k)} for p in points]


def epochs_logged(run_dir):
    return [p["epoch"] for p in tracking.read_metrics(run_dir) if "epoch_seconds" in p]


@pytest.mark.slow
def test_kill_9_mid_training_then_the_same_command_gives_identical_metrics(tmp_path, monkeypatch):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "experiments" / "train.py"), f"hydra.run.dir={run_dir}", *OVERRIDES]
    monkeypatch.setenv("WANDB_MODE", "offline")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after = random.randint(1, 2)  # epochs logged; then a random moment inside the next epoch
    deadline = time.monotonic() + 240
    while len(epochs_logged(run_dir)) < kill_after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.03))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = tracking.read_summary(run_dir)
    assert at_kill["status"] == "running", at_kill  # killed mid-training, never reported finished
    logged = epochs_logged(run_dir)
    assert kill_after <= len(logged) <= 4 and logged == list(range(1, len(logged) + 1))

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=OVERRIDES)  # the command's own config
    resumed = train_and_evaluate(cfg, run_dir, progress=False)
    quiet = cfg.copy()
    quiet.logger.mode = "disabled"  # W&B does not change the numbers
    reference = train_and_evaluate(quiet, tmp_path / "uninterrupted", progress=False)

    assert resumed["status"] == "finished" and resumed.get("resumed_from_epoch", 0) <= len(logged)
    assert stable([resumed]) == stable([{**reference, "wandb_id": resumed["wandb_id"]}])  # bit-identical
    assert resumed["wandb_id"] == at_kill["wandb_id"] is not None  # the same W&B run, resumed
    offline_runs = sorted((run_dir / "wandb").glob("offline-run-*"))  # `wandb sync` joins them
    assert [r.name[-8:] for r in offline_runs] == [resumed["wandb_id"]] * 2
    assert epochs_logged(run_dir) == [1, 2, 3, 4]  # none duplicated or missing
    assert stable(tracking.read_metrics(run_dir)) == stable(tracking.read_metrics(tmp_path / "uninterrupted"))


def test_points_after_the_checkpoint_and_cut_short_lines_are_dropped_on_resume(tmp_path):
    record = tracking.RunRecord(tmp_path)
    for epoch in (1, 2, 3):
        record.log({"epoch": epoch, "epoch_seconds": 0.1, "test/mse": 0.1 / epoch})
    record.log({"epoch": 3, "test/ssim": 0.5})  # the end-of-run evaluation
    with open(record.metrics_path, "a") as f:
        f.write('{"epoch": 4, "test/m')  # killed mid-write
    assert [p["epoch"] for p in tracking.read_metrics(tmp_path)] == [1, 2, 3, 3]
    record.truncate_after(3)  # the checkpoint is at epoch 3: its evaluation is redone
    assert tracking.read_metrics(tmp_path) == [{"epoch": e, "epoch_seconds": 0.1, "test/mse": 0.1 / e}
                                               for e in (1, 2, 3)]
    record.truncate_after(0)
    assert tracking.read_metrics(tmp_path) == []


@pytest.mark.slow
def test_finished_runs_are_left_alone_other_settings_and_corruption_are_errors_fresh_starts_over(tmp_path):
    cfg = make_cfg("train.epochs=2", *TINY)
    first = train_and_evaluate(cfg, tmp_path, progress=False)
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")
             if p.is_file() and p.name != ".lock"}
    assert train_and_evaluate(cfg, tmp_path, progress=False) == first  # skipped: files untouched
    other = make_cfg("train.epochs=2", "optimizer.learning_rate=0.002", *TINY)
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(optimizer.learning_rate: "
                                          r"0.001 -> 0.002\); run again with fresh=true"):
        train_and_evaluate(other, tmp_path, progress=False)  # neither skipped nor resumed with it
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == files

    tracking.write_json_atomic(tmp_path / "summary.json", {**first, "status": "running"})  # as if killed
    data = next(p for p in sorted((tmp_path / "checkpoints" / "2").rglob("*"))
                if p.is_file() and p.stat().st_size > 200)
    data.write_bytes(b"\0" * data.stat().st_size)  # the same size, other bytes
    metrics = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match=r"checkpoint 2 in .* is corrupted .*run again with fresh=true"):
        train_and_evaluate(cfg, tmp_path, progress=False)
    failed = tracking.read_summary(tmp_path)
    assert failed["status"] == "failed" and failed["error"].startswith("CheckpointError: checkpoint 2 in")
    assert (tmp_path / "metrics.jsonl").read_text() == metrics  # nothing restarted behind the user's back

    again = train_and_evaluate(make_cfg("train.epochs=2", "fresh=true", *TINY), tmp_path, progress=False)
    assert again["status"] == "finished" and again["wall_seconds"] != first["wall_seconds"]
    assert stable([again]) == stable([first])  # the same seed: the same numbers, from scratch
    assert epochs_logged(tmp_path) == [1, 2] and "resumed_from_epoch" not in again


def test_a_field_added_since_a_run_was_recorded_counts_as_its_default(tmp_path):
    from aeflax.config import settings
    from aeflax.run import SETTINGS, check_same_settings

    ours = settings(make_cfg(*TINY))
    older = {k: v for k, v in ours.items() if k != "loss.beta"}  # recorded before loss.beta existed
    tracking.write_json_atomic(tmp_path / SETTINGS, older)
    check_same_settings(tmp_path, ours)  # resumes or skips as before
    with pytest.raises(ConfigError, match=r"loss.beta: 1.0 -> 2.0"):
        check_same_settings(tmp_path, {**ours, "loss.beta": 2.0})
