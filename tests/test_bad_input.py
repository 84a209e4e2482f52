"""Bad input through the command line: one clear line, a non-zero exit, nothing recorded as finished.

Every case is one real `experiments/train.py` call. They run two at a time (a module
fixture) because each costs a process start-up; all fail before JAX is even imported.
The corrupted checkpoint is in test_resume.py, the locked run directory in
test_reliability.py (they need a real run first).
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # every case is a subprocess of experiments/train.py
TINY = ["data.train_limit=300", "data.test_limit=100", "train.epochs=1", "train.batch_size=100",
        "logger=disabled", "eval.figures=false"]


def output_under_a_file(tmp: Path) -> str:
    (tmp / "a_file").write_text("not a directory")
    return f"hydra.run.dir={tmp / 'a_file' / 'run'}"


# (id, overrides, the message it must print); code size and an unknown dataset: test_cli.py
CASES = [
    ("masking prob", ["noise=masking", "noise.prob=1.0"], "noise.prob=1.0 must be in [0, 1)"),
    ("noise std", ["noise=gaussian", "noise.std=-0.5"], "noise.std=-0.5 must be >= 0"),
    ("batch size", ["train.batch_size=0"], "train.batch_size=0 must be >= 1"),
    ("iwae k", ["loss.k=0"], "loss.k=0 must be >= 1 (importance samples)"),
    ("learning rate", ["optimizer.learning_rate=0"], "optimizer.learning_rate=0.0 must be > 0"),
    ("epochs", ["train.epochs=0"], "train.epochs=0 must be >= 1"),
    ("unknown name", ["model.activation=swish"], "model.activation='swish' is not known; choose one of relu"),
    ("shape the model cannot take", ["model=conv", "model.conv.channels=[16,8,4]"],
     "needs height and width divisible by 8, but fashion_mnist images are 28x28x1"),
    ("unwritable output", [output_under_a_file], "a_file is not a directory); choose another one"),
    ("output that cannot be made", ["hydra.run.dir=/proc/aeflax/run"],
     "output directory /proc/aeflax/run cannot be created or written (No such file or directory)"),
]


def cli(run_dir: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    has_dir = any(o.startswith("hydra.run.dir=") for o in overrides)
    cmd = [sys.executable, str(ROOT / "experiments" / "train.py"), *TINY, *overrides,
           *([] if has_dir else [f"hydra.run.dir={run_dir}"])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=run_dir.parent,
                          env={**os.environ, "WANDB_MODE": "disabled"})


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{case id: (run dir, the finished process)}; the calls run two at a time."""
    root = tmp_path_factory.mktemp("bad_input")
    prepared = {}
    for name, overrides, _ in CASES:
        case_dir = root / name.replace(" ", "_")
        case_dir.mkdir()
        prepared[name] = (case_dir / "run", [o(case_dir) if callable(o) else o for o in overrides])
    with ThreadPoolExecutor(2) as pool:
        procs = dict(zip(prepared, pool.map(lambda p: cli(*p), prepared.values()), strict=True))
    return {name: (prepared[name][0], procs[name]) for name in prepared}


@pytest.mark.parametrize("name,message", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_a_failed_exit(results, name, message):
    run_dir, proc = results[name]
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr[-3000:]
    summary = run_dir / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["status"] == "failed"
