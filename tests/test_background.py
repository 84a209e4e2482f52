"""The run's side work on threads: the W&B run (started and driven in the background) and the
checkpoint writer (saves written while the next epoch trains)."""

import logging
import os
import subprocess
import sys
import threading

import jax.numpy as jnp
import pytest
from conftest import make_cfg
from omegaconf import OmegaConf

from aeflax import checkpoint, tracking, training
from aeflax.config import LoggerConfig


class Calls:
    """Stands in for a WandbRun: keeps each call and the thread it ran on."""

    def __init__(self, started: threading.Event):
        started.wait(10)
        self.id, self.calls = "calls01", []

    def __getattr__(self, method):
        return lambda *args, **kwargs: self.calls.append((method, args, threading.current_thread().name))


def test_a_background_run_starts_off_the_caller_and_keeps_the_order_of_calls():
    go = threading.Event()
    made = []
    bg = tracking.BackgroundRun(lambda: made.append(Calls(go)) or made[-1])
    bg.log({"loss": 1.0}, step=1)  # queued while the run starts: returns at once
    bg.log_image("figures/x", "x.png", step=1)
    go.set()
    bg.started()
    assert bg.id == "calls01"
    bg.summary({"status": "finished"})
    bg.finish()
    bg.log({"late": 1.0})  # after finish: nothing
    run = made[0]
    assert [c[0] for c in run.calls] == ["log", "log_image", "summary", "finish"]
    assert run.calls[0][1] == ({"loss": 1.0},) and run.calls[-1][1] == ()
    assert all(c[2].startswith("aeflax-wandb") for c in run.calls)


def test_a_failing_background_call_is_one_warning_and_the_run_goes_on(caplog):
    class Broken:
        id = "broken1"

        def log(self, metrics, step=None):
            raise RuntimeError("disk full")

        def finish(self, exit_code=0):
            pass

    bg = tracking.BackgroundRun(Broken)
    with caplog.at_level(logging.WARNING, logger="aeflax.tracking"):
        bg.log({"loss": 1.0})
        bg.finish()
    assert "W&B log failed (RuntimeError: disk full)" in caplog.text


def test_new_run_ids_are_chosen_before_wandb_starts(tmp_path):
    cfg = OmegaConf.structured(LoggerConfig)
    one, two = (tracking.new_run_id(cfg, tmp_path / "run", "run") for _ in range(2))
    assert len(one) == 8 and one.isalnum() and one.islower() and one != two  # W&B's own form
    cfg.dir = str(tmp_path)  # a sweep's shared workspace: the id says the job's overrides
    assert tracking.new_run_id(cfg, tmp_path / "seed=1", "seed=1").startswith("seed=1-")
    cfg.mode = "disabled"
    assert tracking.new_run_id(cfg, tmp_path / "run", "run") is None


def test_the_writer_saves_in_order_beside_the_caller_and_waits_on_request(tmp_path, monkeypatch):
    graphdef, state = training.init_state(make_cfg(), (28, 28, 1), 4)
    threads = []
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda mgr, epoch, state: threads.append(
        threading.current_thread().name) or real_save(mgr, epoch, state))
    writer = checkpoint.Writer(tmp_path)
    for epoch in (1, 2, 3):
        writer.save(epoch, state.replace(epoch=jnp.asarray(epoch, jnp.int32)))
    mgr = writer.manager()
    writer.close()
    assert mgr.all_steps() == [2, 3]  # max_to_keep=2, written in order
    assert int(checkpoint.restore(mgr, state).epoch) == 3
    assert len(threads) == 3 and all(name.startswith("aeflax-checkpoint") for name in threads)


def test_a_failed_save_fails_the_run_at_the_next_save_or_wait(tmp_path, monkeypatch):
    _, state = training.init_state(make_cfg(), (28, 28, 1), 4)

    def broken(mgr, epoch, state):
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint, "save", broken)
    writer = checkpoint.Writer(tmp_path)
    writer.save(1, state)
    with pytest.raises(OSError, match="No space left"):
        writer.save(2, state)  # waits for the save before it, one at a time
    with pytest.raises(OSError, match="No space left"):
        writer.manager()
    writer.close()


def test_wandb_init_waits_while_the_service_still_holds_a_killed_process_run(tmp_path, monkeypatch):
    folders = tmp_path / "wandb"

    class Service:
        """wandb as a service that holds the run id for its first two calls; each call makes its
        folder first, as wandb.init does."""

        calls = 0

        def init(self, **kwargs):
            self.calls += 1
            (folders / f"offline-run-2026120{self.calls}_000000-{kwargs['id']}").mkdir()
            if self.calls <= 2:
                raise RuntimeError(f"run ID {kwargs['id']} is in use")
            return f"run {kwargs['id']}"

    folders.mkdir()
    (folders / "offline-run-20261130_000000-abc").mkdir()  # the killed attempt's folder: kept
    (folders / "offline-run-20261201_000000-other").mkdir()  # another run's: kept
    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)
    assert tracking._init_when_free(Service(), dir=str(tmp_path), id="abc") == "run abc"
    assert sorted(p.name for p in folders.iterdir()) == ["offline-run-20261130_000000-abc",
                                                          "offline-run-20261201_000000-other",
                                                          "offline-run-20261203_000000-abc"]
    with pytest.raises(RuntimeError, match="is in use"):
        tracking._init_when_free(Service(), seconds=-1, dir=str(tmp_path), id="abc")  # no time left


@pytest.mark.slow
def test_an_offline_run_logs_a_figure_without_importing_pandas(tmp_path):
    """W&B's DataFrame check on a logged figure imports pandas where pandas is installed (seconds
    beside the training); aeflax makes it read the type's name instead, which still knows a
    DataFrame when it sees one."""
    code = """
import sys, numpy as np, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from omegaconf import OmegaConf
from aeflax import tracking
from aeflax.config import LoggerConfig
cfg = OmegaConf.structured(LoggerConfig)
cfg.mode = "offline"
run = tracking.WandbRun(cfg, sys.argv[1], {}, name="figure", group=None)
plt.imsave(sys.argv[1] + "/f.png", np.zeros((4, 4)))
run.log_image("figures/f", sys.argv[1] + "/f.png", step=1)
run.finish()
assert run.run is None
print("pandas imported:", "pandas" in sys.modules)
import pandas, wandb
print("a DataFrame:", wandb.util.is_pandas_data_frame(pandas.DataFrame({"a": [1]})),
      wandb.util.is_pandas_data_frame(np.zeros(2)))
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "WANDB_SILENT": "true"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pandas imported: False" in out.stdout
    assert "a DataFrame: True False" in out.stdout
    assert list((tmp_path / "wandb").glob("offline-run-*/files/media/images/figures/f_*.png"))


def test_pytest_rewrites_only_our_tests_not_a_librarys_test_modules():
    """pytest's assertion rewriting parses a module with `ast.parse` as it is imported, which on
    CPython 3.11.7 can fail ("AST constructor recursion depth mismatch") while W&B starts on its
    thread: orbax.checkpoint imports its test_utils the first time a run saves (pyproject.toml)."""
    import orbax.checkpoint.test_utils as library_test_module
    import test_background

    assert type(test_background.__loader__).__name__ == "AssertionRewritingHook"  # ours are
    assert type(library_test_module.__loader__).__name__ != "AssertionRewritingHook"
