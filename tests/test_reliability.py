"""Failures that must not cost a run or a sweep: NaN loss, W&B trouble, a second process, torn writes."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_cfg
from omegaconf import OmegaConf

from aeflax import run, tracking
from aeflax.config import LoggerConfig
from aeflax.training import NonFiniteLoss

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.train_limit=400", "data.test_limit=100", "train.batch_size=100", "eval.reconstruction=false"]
EXPLODING = ["model.output_activation=linear", "optimizer.learning_rate=1e30"]


class Recorder:
    """Stands in for the W&B run and keeps what it was told."""

    def __init__(self, *args, **kwargs):
        self.id, self.summaries, self.exit_codes = "rec0001", [], []

    def log(self, *args, **kwargs):
        pass

    def continue_from(self, points):
        pass

    def log_image(self, *args, **kwargs):
        pass

    def summary(self, summary):
        self.summaries.append(dict(summary))

    def finish(self, exit_code=0):
        self.exit_codes.append(exit_code)


@pytest.mark.slow
def test_an_exploding_learning_rate_fails_the_run_naming_epoch_metric_and_fix(tmp_path, monkeypatch):
    trackers = []
    monkeypatch.setattr(run, "WandbRun", lambda *a, **k: trackers.append(Recorder()) or trackers[-1])
    with pytest.raises(NonFiniteLoss, match=r"^train/loss became nan in epoch 1; lower optimizer\.learning"):
        run.train_and_evaluate(make_cfg("train.epochs=3", *TINY, *EXPLODING), tmp_path, progress=False)
    summary = tracking.read_summary(tmp_path)
    assert summary["status"] == "failed"
    assert summary["error"].startswith("NonFiniteLoss: train/loss became nan in epoch 1; lower optimizer.")
    assert "grad_clip" in summary["error"]
    assert trackers[0].summaries == [{"status": "failed", "error": summary["error"]}]  # W&B is told too
    assert trackers[0].exit_codes == [1]
    assert tracking.read_metrics(tmp_path) == []  # the diverged epoch is not logged as a result


@pytest.mark.slow
def test_a_diverging_job_fails_alone_and_the_sweep_goes_on(tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "train.py"), "-m", f"hydra.sweep.dir={tmp_path}",
           "optimizer.learning_rate=1e30,1e-3", "model.output_activation=linear", "train.epochs=1",
           "logger=disabled", "eval.figures=false", *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [errors[0]] and "train/loss became nan in epoch 1" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    status = {json.loads(p.read_text())["status"]: p.parent.name for p in tmp_path.glob("*/summary.json")}
    assert "learning_rate=1e+30" in status["failed"] and "learning_rate=0.001" in status["finished"]


@pytest.mark.parametrize("failure", ["bad WANDB_MODE", "wandb dir is a file", "online without a key",
                                     "online without network"])
def test_a_wandb_failure_is_one_warning_and_no_wandb(tmp_path, monkeypatch, caplog, failure):
    cfg = OmegaConf.structured(LoggerConfig)
    monkeypatch.setenv("WANDB_MODE", "offline")
    if failure == "bad WANDB_MODE":
        monkeypatch.setenv("WANDB_MODE", "sometimes")
    elif failure == "wandb dir is a file":
        (tmp_path / "wandb").write_text("in the way")
    elif failure == "online without a key":
        cfg.mode = "online"
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
        monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    else:
        cfg.mode = "online"
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: refused at once
    import wandb

    wandb.teardown()  # wandb reads the environment once per process: start from a clean slate
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="aeflax.tracking"):
        tracker = tracking.WandbRun(cfg, tmp_path, {}, name="x", group=None)
    assert tracker.run is None and tracker.id is None
    assert time.monotonic() - started < 20  # fails fast: never waits for wandb's init timeout
    ours = [r for r in caplog.records if r.name == "aeflax.tracking"]
    assert len(ours) == 1 and "W&B is off for this run" in ours[0].getMessage()
    assert "local record" in caplog.text
    if failure.startswith("online"):
        assert "logger=offline" in caplog.text  # the advice
    tracker.log({"train/loss": 1.0}, step=1)  # the rest is a no-op
    tracker.finish()


def test_training_goes_on_when_wandb_cannot_start(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="aeflax.tracking"):
        summary = run.train_and_evaluate(make_cfg("train.epochs=1", "logger.mode=online", *TINY), tmp_path,
                                         progress=False)
    assert summary["status"] == "finished" and summary["wandb_id"] is None
    assert tracking.read_summary(tmp_path) == json.loads(json.dumps(summary))
    assert [m["epoch"] for m in tracking.read_metrics(tmp_path) if "epoch_seconds" in m] == [1]
    assert "cannot reach http://127.0.0.1:9" in caplog.text


def test_a_second_process_in_the_same_run_directory_is_refused(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from aeflax.tracking import RunLock; "
         "RunLock(sys.argv[1]).__enter__(); print('held', flush=True); time.sleep(120)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(tracking.RunLocked, match=rf"another process \(pid {holder.pid}\) is running in "):
            run.train_and_evaluate(make_cfg(*TINY), tmp_path, progress=False)
        assert not (tmp_path / "summary.json").exists()  # the record belongs to the running process
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait()
    with tracking.RunLock(tmp_path):
        pass


def test_a_signal_after_the_last_epoch_lets_the_run_finish_then_stops_the_process():
    """A SIGTERM during the end-of-run evaluation once let the basic launcher go on to the next job."""
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    try:
        with run.StopSignals():
            os.kill(os.getpid(), signal.SIGUSR1)  # the run evaluates: the signal is noted, the run goes on
            time.sleep(0.01)
            assert calls == []
        assert calls == [signal.SIGUSR1]  # the finished run hands it to the handler before it
        with run.StopSignals() as signals:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.01)
            signals.stopped = True  # training stopped for it: Interrupted and pass_on take it from here
        assert calls == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_summary_json_is_replaced_whole_or_not_at_all(tmp_path):
    tracking.write_json_atomic(tmp_path / "summary.json", {"status": "running", "x": 1})
    with pytest.raises(TypeError):
        tracking.write_json_atomic(tmp_path / "summary.json", {"status": "finished", "x": object()})
    assert tracking.read_summary(tmp_path) == {"status": "running", "x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left behind
    assert (tmp_path / "summary.json").stat().st_mode & 0o644 == 0o644
