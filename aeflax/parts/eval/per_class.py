"""Reconstruction error per class: test/mse_class<k>, the test MSE of the test images of class k,
and a bar figure. Which classes the model serves badly is hidden by the mean (and a one-class run's
anomalies are the classes it was not trained on)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aeflax.parts import Evaluation


def per_class_means(values, labels, num_classes: int) -> np.ndarray:
    """Mean of `values` over the images of each class, [num_classes]; NaN for a class with none."""
    sums = np.bincount(labels, weights=np.asarray(values, np.float64), minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@dataclass
class Fields:
    per_class: bool = False  # test/mse_class<k> per test class k (and a bar figure)


class PerClass(Evaluation):
    name = "per_class"
    Fields = Fields

    def asked(self, cfg) -> bool:
        return cfg.eval.per_class

    def run(self, ctx):
        test = ctx.dataset.test
        mse = per_class_means(ctx.terms["mse"], test.labels, ctx.dataset.num_classes)
        metrics = {f"test/mse_class{k}": float(v) for k, v in enumerate(mse) if not np.isnan(v)}
        paths = {}
        if ctx.figdir:
            from aeflax import figures  # matplotlib loads when a figure is drawn, not at start-up

            paths["mse_per_class"] = figures.bars(mse, ctx.figdir / "mse_per_class.png", "class", "test MSE")
        return metrics, paths


PART = PerClass()
