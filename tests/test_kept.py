"""A long evaluation pass stopped between batches, or a run killed after its training, continues
where it stopped: the same numbers as one that ran through, and nothing computed twice."""

import json
import os
import signal

import numpy as np
import pytest
from conftest import make_cfg

from aeflax import evaluation, kept, tracking, training
from aeflax.kept import KeptBatches, Stopped


def _pass(tmp_path, fingerprint, stop=None, calls=None):
    """map_batches over 10 items in batches of 3, counting the batches computed."""
    x = np.arange(10, dtype=np.float32)

    def f(xb, idx):
        if calls is not None:
            calls.append(int(idx[0]))
        return {"y": xb * 2 + idx, "z": np.stack([xb, -xb], axis=1)}

    keep = KeptBatches(tmp_path, "toy", fingerprint, stop)
    return evaluation.map_batches(f, (x, np.arange(10)), 3, "toy", keep=keep)


def test_a_stopped_pass_continues_from_its_kept_batches_to_the_same_outputs(tmp_path):
    reference = _pass(tmp_path / "through", {"epoch": 1})
    asked = []

    def stop():  # a stop signal arrives during the second batch
        asked.append(1)
        return len(asked) >= 2

    with pytest.raises(Stopped, match="toy: 6 of 10 images done and kept"):
        _pass(tmp_path, {"epoch": 1}, stop)
    assert (tmp_path / kept.DIRNAME / "toy.npz").exists()

    calls = []
    resumed = _pass(tmp_path, {"epoch": 1}, calls=calls)
    assert calls == [6, 9]  # only the batches the stopped pass had not finished
    for k in reference:
        np.testing.assert_array_equal(resumed[k], reference[k])

    calls.clear()  # another state (or settings): what was kept is not used
    other = _pass(tmp_path, {"epoch": 2}, calls=calls)
    assert calls == [0, 3, 6, 9] and np.array_equal(other["y"], reference["y"])

    (tmp_path / kept.DIRNAME / "toy.npz").write_bytes(b"not an npz")  # damaged: starts over
    calls.clear()
    _pass(tmp_path, {"epoch": 2}, calls=calls)
    assert calls == [0, 3, 6, 9]
    kept.remove(tmp_path)
    assert not (tmp_path / kept.DIRNAME).exists()


@pytest.mark.slow
def test_the_likelihood_of_a_stopped_pass_resumes_to_the_same_numbers(fmnist_small, tmp_path):
    """The importance-sampled NLL (k * images above the long-pass bound), stopped after two of its
    four batches and continued, equals the pass that ran through, to the bit."""
    cfg = make_cfg("bottleneck.kind=gaussian", "bottleneck.code_size=4", "loss.name=elbo",
                   "model.hidden=[16]", "eval.likelihood=true", "eval.importance_samples=5001",
                   "eval.importance_chunk=1667", "train.eval_batch_size=50")
    graphdef, state = training.init_state(cfg, (28, 28, 1), 1)
    model, images = training.FitResult(graphdef, state, []).model, fmnist_small.test.images[:200]
    assert len(images) * cfg.eval.importance_samples > 10**6  # a long pass: kept when given a directory

    through = evaluation.likelihood_nll(cfg, model, state, images)
    asked = []
    stop = lambda: asked.append(1) or len(asked) >= 2  # noqa: E731  (a signal in the second batch)
    with pytest.raises(Stopped, match="100 of 200 images"):
        evaluation.likelihood_nll(cfg, model, state, images, tmp_path, stop)
    resumed = evaluation.likelihood_nll(cfg, model, state, images, tmp_path)
    np.testing.assert_array_equal(resumed, through)
    assert np.all(np.isfinite(through)) and len(through) == 200


@pytest.mark.slow
def test_a_run_killed_in_its_evaluation_after_early_stopping_only_evaluates_when_resumed(tmp_path,
                                                                                           monkeypatch):
    """Training ended (early stopping kept an earlier epoch), then the evaluation died: the same
    command trains nothing, keeps every epoch's record, and reports the uninterrupted run's numbers."""
    from aeflax import checkpoint
    from aeflax.run import train_and_evaluate

    overrides = ("train.epochs=16", "train.batch_size=32", "data.val_size=500", "data.train_limit=1500",
                 "data.test_limit=200", "train.early_stopping_patience=2", "optimizer.learning_rate=0.05")
    reference = train_and_evaluate(make_cfg(*overrides), tmp_path / "uninterrupted", progress=False)
    best = reference["epochs"]
    assert best + 2 < 16  # stopped early

    def killed(*args, **kwargs):
        raise RuntimeError("killed during the evaluation")

    run_dir = tmp_path / "killed"
    monkeypatch.setattr(evaluation, "evaluate_run", killed)
    with pytest.raises(RuntimeError, match="killed during"):
        train_and_evaluate(make_cfg(*overrides), run_dir, progress=False)
    assert json.loads((run_dir / tracking.TRAINED).read_text()) == {"epochs": best + 2, "kept_epoch": best}

    monkeypatch.undo()
    monkeypatch.setattr(training, "fit", lambda *a, **k: pytest.fail("the resumed run trained"))
    resumed = train_and_evaluate(make_cfg(*overrides), run_dir, progress=False)
    keep = lambda s: {k: v for k, v in s.items() if "/" in k and "seconds" not in k}  # noqa: E731
    assert resumed["status"] == "finished" and keep(resumed) == keep(reference) and resumed["epochs"] == best
    points = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [p["epoch"] for p in points if "train/loss" in p] == list(range(1, best + 3))
    assert checkpoint.latest_epoch(checkpoint.manager(run_dir)) == best
    assert not (run_dir / tracking.TRAINED).exists() and not (run_dir / checkpoint.BEST_DIRNAME).exists()


@pytest.mark.slow
def test_sigterm_during_a_long_likelihood_pass_stops_the_run_and_the_same_command_finishes_it(
        tmp_path, monkeypatch):
    from aeflax.run import Interrupted, train_and_evaluate

    overrides = ("bottleneck.kind=gaussian", "bottleneck.code_size=4", "loss.name=elbo", "model.hidden=[16]",
                 "train.epochs=2", "train.batch_size=100", "data.train_limit=500", "data.test_limit=200",
                 "eval.likelihood=true", "eval.importance_samples=5001", "eval.importance_chunk=1667",
                 "train.eval_batch_size=50", "eval.reconstruction=false")
    reference = train_and_evaluate(make_cfg(*overrides), tmp_path / "through", progress=False)

    load = KeptBatches.load

    def load_then_sigterm(self):  # the signal arrives as the pass starts: one batch is done, then it stops
        os.kill(os.getpid(), signal.SIGTERM)
        return load(self)

    run_dir = tmp_path / "stopped"
    monkeypatch.setattr(KeptBatches, "load", load_then_sigterm)
    with pytest.raises(Interrupted, match=r"SIGTERM stopped the run in .* in its evaluation \(NLL k=5001: "
                                          r"50 of 200 images done and kept\); the same command resumes it"):
        train_and_evaluate(make_cfg(*overrides), run_dir, progress=False)
    assert (run_dir / kept.DIRNAME / "likelihood_nll.npz").exists()
    monkeypatch.undo()

    monkeypatch.setattr(training, "fit", lambda *a, **k: pytest.fail("the resumed run trained"))
    resumed = train_and_evaluate(make_cfg(*overrides), run_dir, progress=False)
    assert resumed["test/nll_k5001"] == reference["test/nll_k5001"]  # bit-identical on CPU
    assert not (run_dir / kept.DIRNAME).exists()


@pytest.mark.slow
def test_evaluate_py_stopped_in_a_long_pass_continues_it(tmp_path, monkeypatch, capsys):
    import shutil

    from omegaconf import OmegaConf

    from aeflax.run import train_and_evaluate
    from experiments import evaluate

    cfg = make_cfg("bottleneck.kind=gaussian", "bottleneck.code_size=4", "loss.name=elbo",
                   "model.hidden=[16]", "train.epochs=1", "data.train_limit=500", "data.test_limit=200",
                   "eval.reconstruction=false")
    train_and_evaluate(cfg, tmp_path / "run", progress=False)
    (tmp_path / "run" / ".hydra").mkdir()  # as experiments/train.py leaves it
    OmegaConf.save(cfg, tmp_path / "run" / ".hydra" / "config.yaml")
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    overrides = ["eval.likelihood=true", "eval.importance_samples=5001", "eval.importance_chunk=1667",
                 "train.eval_batch_size=50", "logger.mode=disabled"]
    through = evaluate.main([str(tmp_path / "copy"), *overrides])

    load = KeptBatches.load

    def load_then_sigterm(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return load(self)

    monkeypatch.setattr(KeptBatches, "load", load_then_sigterm)
    with pytest.raises(SystemExit) as stopped:
        evaluate.main([str(tmp_path / "run"), *overrides])
    assert stopped.value.code == 128 + signal.SIGTERM
    assert "in its evaluation (NLL k=5001: 50 of 200 images done and kept)" in capsys.readouterr().err
    monkeypatch.undo()
    resumed = evaluate.main([str(tmp_path / "run"), *overrides])
    assert resumed["test/nll_k5001"] == through["test/nll_k5001"]
