"""The VAE family's likelihood: importance-sampled NLL (Burda et al. 2016) when asked; active units
and KL per latent dimension always (cheap)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from aeflax import evaluation
from aeflax.checks import check
from aeflax.parts import Evaluation, bottleneck_of


@dataclass
class Fields:
    likelihood: bool = False  # importance-sampled NLL (active units, KL per dim always)
    importance_samples: int = 1000  # k of test/nll_k<k>; up to 5000 (Burda et al.)
    importance_chunk: int = 250  # samples drawn per compiled step: bounds the memory
    likelihood_limit: Optional[int] = None  # test images for the NLL; null = all


class Likelihood(Evaluation):
    name = "likelihood"
    Fields = Fields

    def asked(self, cfg) -> bool:
        return cfg.eval.likelihood or bottleneck_of(cfg).posterior

    def skip_reason(self, cfg) -> Optional[str]:
        if not bottleneck_of(cfg).posterior:
            return f"needs a VAE-family model (a bottleneck with a posterior), not {cfg.bottleneck.kind}"
        return None

    def validate(self, cfg) -> None:
        ev = cfg.eval
        check(ev.importance_samples >= 1, f"eval.importance_samples={ev.importance_samples} must be >= 1")
        check(ev.importance_chunk >= 1, f"eval.importance_chunk={ev.importance_chunk} must be >= 1")
        check(ev.likelihood_limit is None or ev.likelihood_limit >= 1,
              f"eval.likelihood_limit={ev.likelihood_limit} must be >= 1 (or null for all)")

    def run(self, ctx):
        from aeflax import figures  # matplotlib loads when a figure is drawn, not at start-up

        ev, terms, metrics, paths = ctx.cfg.eval, ctx.terms, {}, {}
        metrics["test/active_units"] = evaluation.active_units(terms["mean"])
        kl = evaluation.kl_per_dim(terms["mean"], terms["logvar"])
        metrics["test/kl_per_dim"] = [float(v) for v in kl]
        if ctx.figdir:
            paths["kl_per_dim"] = figures.bars(kl, ctx.figdir / "kl_per_dim.png", "latent dimension",
                                               "KL(q(z_u|x) || p(z_u)) [nats]")
        if ev.likelihood:
            t0 = time.perf_counter()
            test = ctx.dataset.test
            images = test.images[:ev.likelihood_limit or len(test)]
            nll = evaluation.likelihood_nll(ctx.cfg, ctx.model, ctx.state, images, ctx.run_dir, ctx.stop)
            # test/nll is DESIGN.md's name; test/nll_k<K> says K in the name for tables across K
            metrics["test/nll"] = metrics[f"test/nll_k{ev.importance_samples}"] = float(np.mean(nll))
            metrics["test/nll_samples"] = int(ev.importance_samples)
            metrics["time/eval/likelihood_seconds"] = time.perf_counter() - t0  # this attempt's (aeflax.kept)
        return metrics, paths


PART = Likelihood()
