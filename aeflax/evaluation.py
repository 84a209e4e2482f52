"""Evaluation at the end of a run: metrics for each use, and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aeflax import figures


def evaluate_run(cfg, result, dataset, workdir: Path, tracker) -> dict:
    """Run the evaluations `cfg.eval` asks for; return their metrics (slash names)."""
    metrics: dict = {}
    if cfg.eval.figures:
        model = result.model
        x = dataset.test.images[:10].astype(np.float32) / 255.0
        recon = np.asarray(model(x)["recon"])
        path = figures.reconstructions(x, recon, Path(workdir) / "figures" / "reconstructions.png")
        if tracker:
            tracker.log_image("figures/reconstructions", path)
    return metrics
