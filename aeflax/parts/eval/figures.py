"""The pictures: originals over reconstructions, samples, interpolations and the 2-D code map."""

from __future__ import annotations

from dataclasses import dataclass

from aeflax import evaluation
from aeflax.parts import Evaluation, record


@dataclass
class Fields:
    figures: bool = record(True)


class Figures(Evaluation):
    name = "figures"
    Fields = Fields

    def asked(self, cfg) -> bool:
        return cfg.eval.figures

    def run(self, ctx):
        return {}, evaluation.pictures(ctx.cfg, ctx.model, ctx.state, ctx.dataset, ctx.figdir, draw=ctx.draw)


PART = Figures()
