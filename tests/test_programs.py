"""Compiled programs shared by the runs of one process: one compilation per program, and every
run still computes its own numbers (its seed, traced values and keys are arguments)."""

import numpy as np
import pytest
from conftest import make_cfg

from aeflax import programs, run, training

TINY = ["data.train_limit=400", "data.test_limit=100", "train.batch_size=100", "train.epochs=2"]
DENOISING = [*TINY, "noise.kind=gaussian", "eval.denoising_levels=[0.3]"]


def test_runs_that_differ_in_seed_and_traced_values_share_a_program_others_do_not():
    graphdef, _ = training.init_state(make_cfg(*TINY), (28, 28, 1), 4)
    epoch = lambda *o: training.compiled_train_epoch(graphdef, make_cfg(*TINY, *o), 400)  # noqa: E731
    assert epoch() is epoch("seed=3", "optimizer.learning_rate=0.01")
    assert epoch() is not epoch("train.epochs=3")  # the schedule's length is read when tracing
    assert epoch() is not epoch("penalty.l1_activity=0.001")  # a term switched on
    assert programs.program_key(make_cfg(*TINY)) != programs.program_key(make_cfg(*TINY, "loss.name=bce"))


@pytest.mark.slow
def test_a_run_after_another_of_its_program_gives_the_numbers_it_gives_alone(tmp_path):
    """Run b re-uses the programs compiled for run a (other seed, learning rate and noise level):
    the same summary, to the bit, as b in a process where nothing was compiled before it."""
    a = make_cfg(*DENOISING, "seed=0", "noise.std=0.5", "optimizer.learning_rate=0.002")
    b = make_cfg(*DENOISING, "seed=1", "noise.std=0.2")
    strip = lambda s: {k: v for k, v in s.items() if "seconds" not in k}  # noqa: E731
    run.train_and_evaluate(a, tmp_path / "a", progress=False)
    after_a = run.train_and_evaluate(b, tmp_path / "b_after_a", progress=False)
    programs._programs.clear()
    alone = run.train_and_evaluate(b, tmp_path / "b_alone", progress=False)
    assert strip(after_a) == strip(alone)
    assert "denoise/psnr@0.3" in alone and np.isfinite(alone["test/ssim"])
