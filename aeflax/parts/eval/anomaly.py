"""One-class anomaly detection: train on one class (data.normal_class), score every test image by
reconstruction error or negative ELBO, report the AUROC."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from aeflax import evaluation
from aeflax.checks import one_of
from aeflax.parts import Evaluation, bottleneck_of

SCORES = ("auto", "recon", "elbo")


@dataclass
class Fields:
    anomaly: bool = False  # one-class AUROC; needs data.normal_class
    anomaly_score: str = "auto"  # recon (per-image MSE) | elbo (negative ELBO) | auto (elbo for VAEs)


class Anomaly(Evaluation):
    name = "anomaly"
    Fields = Fields

    def asked(self, cfg) -> bool:
        return cfg.eval.anomaly

    def skip_reason(self, cfg) -> Optional[str]:
        return "needs a one-class run (data.normal_class=<class>)" if cfg.data.normal_class is None else None

    def validate(self, cfg) -> None:
        one_of(cfg.eval.anomaly_score, SCORES, "eval.anomaly_score")

    def run(self, ctx):
        from aeflax import figures  # matplotlib loads when a figure is drawn, not at start-up

        cfg, test = ctx.cfg, ctx.dataset.test
        bound = bottleneck_of(cfg).posterior
        kind = cfg.eval.anomaly_score
        kind = ("elbo" if bound else "recon") if kind == "auto" else kind
        if kind == "elbo" and not bound:
            logging.getLogger(__name__).warning(
                "eval.anomaly_score=elbo skipped: needs a VAE; scoring by reconstruction error")
            kind = "recon"
        scores = -ctx.terms["elbo"] if kind == "elbo" else ctx.terms["mse"]
        is_anomaly = test.labels != cfg.data.normal_class
        metrics, paths = {"anomaly/auroc": evaluation.auroc(is_anomaly, scores)}, {}
        if ctx.figdir:
            paths["anomaly_scores"] = figures.score_histogram(
                scores, is_anomaly, ctx.figdir / "anomaly_scores.png",
                f"normal class {cfg.data.normal_class}: {'-ELBO' if kind == 'elbo' else 'MSE'} "
                f"(AUROC {metrics['anomaly/auroc']:.3f})")
        return metrics, paths


PART = Anomaly()
