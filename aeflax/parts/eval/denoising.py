"""Noise removal: per noise level, PSNR / MSE of the reconstruction of a noisy test image against
the clean one, beside the noisy input's own PSNR."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aeflax import evaluation
from aeflax.checks import check, one_of
from aeflax.parts import Evaluation, registry


@dataclass
class Fields:
    denoising_levels: list[float] = field(default_factory=list)  # noise levels: denoise/psnr@<level>
    denoising_kind: str = "gaussian"  # a noise kind; the level is its std (gaussian) or prob


class Denoising(Evaluation):
    name = "denoising"
    Fields = Fields

    def asked(self, cfg) -> bool:
        return bool(cfg.eval.denoising_levels)

    def validate(self, cfg) -> None:
        ev = cfg.eval
        check(all(s >= 0 for s in ev.denoising_levels), "eval.denoising_levels must be >= 0")
        kinds = {name: p for name, p in registry()["noise"].items() if p.level}
        one_of(ev.denoising_kind, kinds, "eval.denoising_kind")
        check(kinds[ev.denoising_kind].level != "prob" or all(s < 1 for s in ev.denoising_levels),
              f"eval.denoising_levels={list(ev.denoising_levels)} are probabilities for "
              f"{ev.denoising_kind} noise: each must be < 1")

    def run(self, ctx):
        from aeflax import figures  # matplotlib loads when a figure is drawn, not at start-up

        cfg, test, metrics, paths = ctx.cfg, ctx.dataset.test, {}, {}
        rows, denoise = [], evaluation.denoiser(cfg, ctx.model, ctx.state)
        for level in cfg.eval.denoising_levels:
            d = denoise(test.images, float(level))
            at = f"@{float(level):g}"
            metrics.update({f"denoise/psnr{at}": float(np.mean(d["psnr"])),
                            f"denoise/mse{at}": float(np.mean(d["mse"])),
                            f"denoise/noisy_psnr{at}": float(np.mean(d["noisy_psnr"])),
                            f"denoise/psnr_gain{at}": float(np.mean(d["psnr"] - d["noisy_psnr"]))})
            rows += [(f"noisy {level:g}", d["noisy"][:8]), (f"denoised {level:g}", d["recon"][:8])]
        if ctx.figdir:
            rows.insert(0, ("clean", d["clean"][:8]))
            paths["denoising"] = figures.image_rows(rows, ctx.figdir / "denoising.png",
                                                    f"{cfg.eval.denoising_kind} noise: before / after")
        return metrics, paths


PART = Denoising()
