"""The command line end to end: the run record, the offline W&B run, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # every test is a subprocess of experiments/train.py


def train(tmp_path, *overrides, env=None):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "experiments" / "train.py"), f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, **(env or {})})
    return proc, run_dir


def test_cli_writes_the_run_record_and_an_offline_wandb_run(tmp_path):
    proc, run_dir = train(tmp_path, "train.epochs=2", "train.batch_size=64", "data.train_limit=2000",
                          "data.test_limit=500",
                          "logger=offline", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["seed"] == 0 and summary["epochs"] == 2
    assert 0 < summary["test/mse"] < 0.065 and summary["wall_seconds"] > 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [m for m in lines if "epoch_seconds" in m]  # the evaluation's point follows them
    assert [m["epoch"] for m in epochs] == [1, 2] and all("step" in m for m in lines)
    assert epochs[-1]["test/mse"] == summary["test/mse"]
    assert lines[-1]["epoch"] == 2 and lines[-1]["test/ssim"] == summary["test/ssim"]
    assert (run_dir / "figures" / "reconstructions.png").stat().st_size > 5000
    assert (run_dir / ".hydra" / "config.yaml").exists()
    offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0


@pytest.mark.parametrize("override,message", [
    ("model=transformer", "Could not find 'model/transformer'"),
    ("bottleneck.code_size=0", "bottleneck.code_size=0 must be >= 1"),
    ("data.name=no_such_set", "unknown dataset 'no_such_set'"),
    ("train.batch_size=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("model.hiden=[8]", "Key 'hiden' not in 'ModelConfig'"),
])
def test_bad_input_fails_with_a_clear_message(tmp_path, override, message):
    proc, run_dir = train(tmp_path, override, "logger=disabled")
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    summary = run_dir / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["status"] == "failed"
