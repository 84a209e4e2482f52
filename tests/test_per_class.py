"""eval.per_class, the worked example of docs/extending.md (an end-of-run evaluation): per-class test
MSEs that average back to the run's test/mse, their figure, and nothing when not asked."""

import numpy as np
from conftest import make_cfg

from aeflax import evaluation, training
from aeflax.parts.eval.per_class import PART, per_class_means


def test_per_class_means_known_values():
    means = per_class_means([1.0, 3.0, 10.0], np.array([0, 0, 2]), 4)
    np.testing.assert_array_equal(means, [2.0, np.nan, 10.0, np.nan])


def test_per_class_mses_average_back_to_test_mse_weighted_by_class_counts(fmnist_small, tmp_path):
    cfg = make_cfg("eval.per_class=true", "eval.reconstruction=false", "train.epochs=1")
    result = training.fit(cfg, fmnist_small, progress=False)
    metrics = evaluation.evaluate_run(cfg, result, fmnist_small, tmp_path, None)
    labels = fmnist_small.test.labels
    counts = np.bincount(labels, minlength=10)
    per_class = np.array([metrics[f"test/mse_class{k}"] for k in range(10)])
    assert len({round(v, 6) for v in per_class}) == 10  # ten different numbers, not one copied
    np.testing.assert_allclose(per_class @ counts / counts.sum(), result.history[-1]["test/mse"], rtol=1e-5)

    ctx = evaluation.Context(cfg, result.model, result.state, fmnist_small, tmp_path / "figures")
    _, figures = PART.run(ctx)  # with figures on: one bar chart
    assert figures["mse_per_class"].stat().st_size > 1000
    plain = evaluation.evaluate_run(make_cfg("eval.reconstruction=false"), result, fmnist_small, tmp_path,
                                    None)  # not asked: not run
    assert not any(k.startswith("test/mse_class") for k in plain)
