"""scripts/device_check.sh (the first minutes on an accelerator) runs every step in its quick mode
on a CPU and prints the ratios."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow  # the bench subset, a default run and four small sweeps, in subprocesses


def test_the_device_check_runs_every_step_and_prints_the_ratios(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    out = subprocess.run([str(ROOT / "scripts" / "device_check.sh"), "--quick"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "failed" not in out.stdout and "skipped" not in out.stdout, out.stdout
    ratios = out.stdout.split("device_check: the ratios", 1)[1].splitlines()
    assert any(line.startswith("Matmul rate at") for line in ratios)
    trained = [line for line in ratios if line.startswith(("| dense |", "| conv |", "| vae |"))]
    # each model's epoch (the conv AE at batch 32 and 256), and its epoch against its matmul limit
    assert len(trained) == 8 and sum(line.startswith("| conv |") for line in trained) == 4
    for n in (2, 4):
        sweeps = {line.split("|")[2].strip(): line for line in ratios if line.startswith(f"| {n} configs")}
        assert set(sweeps) == {"basic", "vmap"}
        assert all(float(line.split("|")[5]) > 0 for line in sweeps.values())  # wall / training
    assert any(line.startswith("| whole run, command to exit |") for line in ratios)
    assert {p.name for p in tmp_path.iterdir()} == {"train.md", "sweep2.md", "run.md", "sweep4.md"}
