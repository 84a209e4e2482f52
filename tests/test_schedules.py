"""Learning-rate schedules and early stopping, with known values."""

import numpy as np
import pytest
from conftest import make_cfg

from aeflax import training
from aeflax.config import ConfigError, validate


def test_burda_schedule_stages():
    sched = training.burda_schedule(steps_per_epoch=10)
    # stage i lasts 3^i epochs at 10^(-i/7): epochs [0,1) stage 0, [1,4) stage 1, [4,13) stage 2, ...
    for epoch, stage in [(0, 0), (1, 1), (3, 1), (4, 2), (12, 2), (13, 3), (1093, 7), (3279, 7)]:
        np.testing.assert_allclose(float(sched(epoch * 10)), 10 ** (-stage / 7), rtol=1e-5)
    assert sum(3**i for i in range(8)) == 3280  # the paper's total number of epochs


@pytest.mark.slow
def test_early_stopping_keeps_the_best_epoch(fmnist_small):
    # a learning rate this high makes the validation loss rise after the first epochs
    cfg = make_cfg("train.epochs=12", "train.batch_size=32", "data.val_size=500",
                   "train.early_stopping_patience=2", "optimizer.learning_rate=0.05")
    from aeflax import data
    from aeflax.config import DataConfig

    ds = data.load(DataConfig(val_size=500, train_limit=1500, test_limit=200))
    result = training.fit(cfg, ds, progress=False)
    losses = [h["val/loss"] for h in result.history]
    best = int(np.argmin(losses)) + 1
    assert int(result.state.epoch) == best  # the state is the best epoch's
    assert len(losses) < 12 and len(losses) == best + 2  # stopped `patience` epochs after the best
    assert all(loss >= losses[best - 1] for loss in losses[best:])


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(ConfigError, match="needs a validation split"):
        validate(make_cfg("train.early_stopping_patience=5"))


@pytest.mark.slow
def test_an_early_stopped_run_records_and_keeps_the_best_epoch(tmp_path):
    import json

    from aeflax import checkpoint
    from aeflax.run import train_and_evaluate

    cfg = make_cfg("train.epochs=12", "train.batch_size=32", "data.val_size=500", "data.train_limit=1500",
                   "data.test_limit=200", "train.early_stopping_patience=2", "optimizer.learning_rate=0.05")
    summary = train_and_evaluate(cfg, tmp_path, progress=False)
    points = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = {p["epoch"]: p["val/loss"] for p in points if "train/loss" in p}
    best = min(val, key=val.get)
    assert len(val) < 12 and summary["epochs"] == best and summary["val/loss"] == val[best]
    assert checkpoint.latest_epoch(checkpoint.manager(tmp_path)) == best  # what load_run restores


@pytest.mark.slow
@pytest.mark.parametrize("count_from", [0, 8])
def test_an_early_stopped_run_interrupted_after_its_best_epoch_resumes_the_same(tmp_path, monkeypatch,
                                                                                count_from):
    """The best epoch before an interruption is kept (checkpoints_best/) and the patience count
    continues: the resumed run stops at the same epoch with the same state as an uninterrupted one;
    with train.early_stopping_from = 8 the patience counts from epoch 8, the best kept from epoch 1."""
    import json
    import signal

    from aeflax import checkpoint, run
    from aeflax.run import Interrupted, train_and_evaluate

    epochs = 16  # room to stop early wherever the best epoch falls (10 on one CPU, earlier on another)
    overrides = (f"train.epochs={epochs}", "train.batch_size=32", "data.val_size=500",
                 "data.train_limit=1500", "data.test_limit=200", "train.early_stopping_patience=2",
                 "optimizer.learning_rate=0.05",
                 "eval.figures=false", f"train.early_stopping_from={count_from}")
    reference = train_and_evaluate(make_cfg(*overrides), tmp_path / "uninterrupted", progress=False)
    best = reference["epochs"]
    last = max(best, count_from - 1) + 2  # the epoch it stops at
    assert 1 <= best and last < epochs  # stopped early: the interruption below falls after the best epoch

    calls = {"n": 0}

    def agreed(self):  # SIGTERM arrives before epoch best + 2: epochs 1 .. best + 1 are done
        calls["n"] += 1
        if calls["n"] == best + 2:
            self.signum = signal.SIGTERM
        self.stopped = self.signum is not None
        return self.stopped

    run_dir = tmp_path / "interrupted"
    monkeypatch.setattr(run.StopSignals, "agreed", agreed)
    with pytest.raises(Interrupted):
        train_and_evaluate(make_cfg(*overrides), run_dir, progress=False)
    assert (run_dir / checkpoint.BEST_DIRNAME / str(best)).is_dir()
    monkeypatch.undo()

    resumed = train_and_evaluate(make_cfg(*overrides), run_dir, progress=False)
    assert resumed["resumed_from_epoch"] == best + 1
    keep = lambda s: {k: v for k, v in s.items() if "/" in k and "seconds" not in k}  # noqa: E731
    assert keep(resumed) == keep(reference) and resumed["epochs"] == best  # bit-identical on CPU
    points = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [p["epoch"] for p in points if "train/loss" in p] == list(range(1, last + 1))
    assert checkpoint.latest_epoch(checkpoint.manager(run_dir)) == best
    assert not (run_dir / checkpoint.BEST_DIRNAME).exists()
def test_step_schedule_scales_after_each_milestone():
    cfg = make_cfg("optimizer.name=sgd", "optimizer.schedule=step", "optimizer.milestones=[2,3]",
                   "optimizer.decay_rate=0.1")
    validate(cfg)
    tx = training.make_optimizer(cfg, steps_per_epoch=3)
    state, scales = tx.init({"w": np.zeros((), np.float32)}), []
    for _ in range(12):
        updates, state = tx.update({"w": np.ones((), np.float32)}, state)
        scales.append(float(updates["w"]))
    # torch's MultiStepLR: epochs 0-1 at 1, epoch 2 at 0.1, epoch 3 on at 0.01 (3 steps an epoch)
    np.testing.assert_allclose(scales, [1] * 6 + [0.1] * 3 + [0.01] * 3, rtol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.milestones=[5]"], "goes with optimizer.schedule=step"),
    (["optimizer.schedule=step"], "goes with optimizer.schedule=step"),
    (["optimizer.schedule=step", "optimizer.milestones=[5,2]"], "must be increasing epochs"),
])
def test_step_schedule_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*overrides))
