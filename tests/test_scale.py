"""Beyond one process: two processes train one run, stop signals, Slurm's requeue (submitit's
local executor), stale records. The subprocess tests are marked slow (each is a few real runs)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_cfg
from hydra import compose, initialize_config_dir

from aeflax import tables, tracking
from aeflax.run import train_and_evaluate
from experiments.schema import register

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "experiments" / "train.py")
TINY = ["data.train_limit=300", "data.test_limit=100", "train.epochs=2", "train.batch_size=100",
        "eval.figures=false"]
# epochs of about half a second: a signal sent after the first lands before the last
LONGER = ["data.train_limit=4000", "data.test_limit=300", "train.epochs=5", "train.batch_size=40",
          "eval.figures=false", "eval.reconstruction=false"]


def compose_cfg(overrides):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    cfg.logger.mode = "disabled"  # W&B does not change the numbers
    return cfg


def metrics(summary):
    return {k: v for k, v in summary.items() if "/" in k and "seconds" not in k}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def epochs_logged(run_dir):
    return [p["epoch"] for p in tracking.read_metrics(run_dir) if "epoch_seconds" in p]


def wait_for_epoch(run_dir, proc, epoch=1, limit=240):
    deadline = time.monotonic() + limit
    while len(epochs_logged(run_dir)) < epoch and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.slow
def test_two_processes_train_one_run_with_the_metrics_of_one_process(tmp_path):
    run_dir = tmp_path / "two"
    procs, outs = two_processes(run_dir)
    assert "Rank 1 is connected to 1 peer" in "".join(outs[1])  # gloo: the processes did exchange gradients
    assert str(run_dir) in outs[0][0] and str(run_dir) not in outs[1][0]  # process 0 reports, alone

    two = tracking.read_summary(run_dir)
    one = train_and_evaluate(compose_cfg(TINY), tmp_path / "one", progress=False)
    assert two["status"] == "finished" and metrics(two).keys() == metrics(one).keys()
    assert metrics(two) == pytest.approx(metrics(one), rel=1e-5, abs=1e-7)
    assert epochs_logged(run_dir) == [1, 2]  # one record: each epoch logged once
    assert [r.name[-8:] for r in (run_dir / "wandb").glob("offline-run-*")] == [two["wandb_id"]]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["1", "2"]

    tracking.write_json_atomic(run_dir / "summary.json", {**two, "status": "running"})  # as if killed
    two_processes(run_dir)  # both processes restore epoch 2; process 0 evaluates again
    again = tracking.read_summary(run_dir)
    assert again["resumed_from_epoch"] == 2 and metrics(again) == metrics(two)


def two_processes(run_dir):
    """experiments/train.py as two processes of one run (JAX's coordinator on localhost)."""
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, TRAIN, f"hydra.run.dir={run_dir}", *TINY, "logger=offline"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WANDB_MODE": "offline", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
             "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    return procs, outs


@pytest.mark.slow
def test_sigterm_saves_the_epoch_records_interrupted_and_the_same_command_resumes(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, TRAIN, f"hydra.run.dir={run_dir}", *LONGER, "train.checkpoint_every=2",
           "logger=disabled"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_epoch(run_dir, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "SIGTERM stopped the run" in lines[0] and "resumes it" in lines[0], err[-2000:]
    stopped = tracking.read_summary(run_dir)
    assert stopped["status"] == "interrupted" and stopped["error"].startswith("Interrupted: SIGTERM")
    epoch = len(epochs_logged(run_dir))
    assert 1 <= epoch < 5 and f"after epoch {epoch}" in lines[0]
    assert str(epoch) in os.listdir(run_dir / "checkpoints")  # saved although checkpoint_every=2

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = tracking.read_summary(run_dir)
    reference = train_and_evaluate(compose_cfg(LONGER), tmp_path / "uninterrupted", progress=False)
    assert resumed["status"] == "finished" and resumed["resumed_from_epoch"] == epoch
    assert metrics(resumed) == metrics(reference)  # bit-identical on CPU
    assert epochs_logged(run_dir) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_a_preempted_submitit_job_is_requeued_and_resumes_to_the_uninterrupted_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, TRAIN, "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}",
           "seed=0", *LONGER, "logger=offline"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "WANDB_MODE": "offline"})
    deadline = time.monotonic() + 240
    while not list(sweep.glob("*/.lock")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run_dir = next(sweep.glob("*/.lock")).parent
    wait_for_epoch(run_dir, proc)
    worker = int((run_dir / ".lock").read_text())  # the process holding the run directory
    os.kill(worker, signal.SIGUSR2)  # what Slurm sends before a time limit / on pre-emption
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]

    log = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "this job is preempted" in log and "Requeued job" in log, log[-3000:]
    summary = tracking.read_summary(run_dir)
    assert summary["status"] == "finished" and summary["resumed_from_epoch"] >= 1
    reference = train_and_evaluate(compose_cfg(["seed=0", *LONGER]), tmp_path / "solo", progress=False)
    assert metrics(summary) == metrics(reference)
    assert epochs_logged(run_dir) == [1, 2, 3, 4, 5]
    # a sweep's jobs log into its one W&B workspace; the requeued job stays one run there
    folders = (sweep / "wandb").glob("offline-run-*")
    assert [r.name.split("-", 3)[-1] for r in folders] == [summary["wandb_id"]]


def write_run(run_dir: Path, summary: dict) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\nname: toy\n")
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / ".lock").write_text("12345\n")
    return run_dir


def test_a_running_record_whose_lock_nobody_holds_is_stale(tmp_path):
    runs = tmp_path / "runs"
    dead, live = (write_run(runs / name, {"status": "running"}) for name in ("dead", "live"))
    write_run(runs / "done", {"status": "finished", "test/mse": 0.01})
    with tracking.RunLock(live):  # a live process holds this one
        found = tables.load_runs([runs])
        assert dict(zip(found["run"], found["status"], strict=True)) == {
            str(dead): "stale", str(live): "unfinished", str(runs / "done"): "finished"}
        table, _, _ = tables.build(found, [], [], ["test/mse"])
        assert table["test/mse"].tolist() == ["0.0100 (1; 1 unfinished; 1 stale)"]
        assert tables.stale_warnings(found) == [
            f"{dead} says running but no process holds it (killed, or its node lost); not counted as "
            "running; the same command resumes it"]
    assert tables.read_run(live)["status"] == "stale"  # its process has ended now


def test_a_rerun_reports_the_stale_record_and_resumes(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "running", "seed": 0}))
    summary = train_and_evaluate(make_cfg(*TINY), run_dir, progress=False)
    assert summary["status"] == "finished"
    assert "stopped without a word" in caplog.text
