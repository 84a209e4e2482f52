"""train.eval_every: the per-epoch evaluation every N epochs and after the last; nothing else moves."""

import pytest
from conftest import make_cfg

from aeflax import training, vmap_sweep
from aeflax.config import ConfigError, validate

BASE = ("train.epochs=5", "train.batch_size=128", "data.train_limit=1000", "data.test_limit=300")


def strip(history):
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


@pytest.fixture(scope="module")
def small():
    from aeflax import data
    from aeflax.config import DataConfig

    return data.load(DataConfig(train_limit=1000, test_limit=300))


def test_eval_due_every_n_epochs_and_after_the_last():
    def due(every):
        return [e for e in range(1, 6) if training.eval_due(make_cfg(*BASE, f"train.eval_every={every}"), e)]

    assert due(1) == [1, 2, 3, 4, 5] and due(2) == [2, 4, 5] and due(0) == [5] and due(9) == [5]


def test_skipped_evaluations_change_no_number(small):
    every = training.fit(make_cfg(*BASE), small, progress=False)
    sparse = training.fit(make_cfg(*BASE, "train.eval_every=2"), small, progress=False)
    full, kept = strip(every.history), strip(sparse.history)
    assert [any(k.startswith("test/") for k in h) for h in kept] == [False, True, False, True, True]
    for a, b in zip(full, kept, strict=True):  # to the bit: the evaluation reads the state, never changes it
        assert b == {k: v for k, v in a.items() if k in b}


def test_a_vmapped_group_evaluates_each_member_on_its_own_schedule(small):
    cfgs = [make_cfg(*BASE), make_cfg(*BASE, "train.eval_every=0", "seed=1")]
    assert len(vmap_sweep.group_configs(cfgs)) == 1  # one program: eval_every changes no number
    group = vmap_sweep.train_group(cfgs, small)
    for member, cfg in zip(group, cfgs, strict=True):
        solo = training.fit(cfg, small, progress=False)
        assert [sorted(h) for h in strip(member.history)] == [sorted(h) for h in strip(solo.history)]


def test_early_stopping_needs_every_epoch_evaluated():
    with pytest.raises(ConfigError, match="eval_every"):
        validate(make_cfg("data.val_size=500", "train.early_stopping_patience=3", "train.eval_every=2"))
    with pytest.raises(ConfigError, match="eval_every"):
        validate(make_cfg("train.eval_every=-1"))
