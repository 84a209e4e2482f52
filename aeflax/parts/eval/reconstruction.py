"""Reconstruction quality beside the epoch's test MSE / BCE / PSNR: SSIM and BCE in nats per image."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aeflax.parts import Evaluation


@dataclass
class Fields:
    reconstruction: bool = True  # test/ssim, test/bce_per_image


class Reconstruction(Evaluation):
    name = "reconstruction"
    Fields = Fields

    def asked(self, cfg) -> bool:
        return cfg.eval.reconstruction

    def run(self, ctx):
        terms = ctx.terms
        return {"test/ssim": float(np.mean(terms["ssim"])),
                "test/bce_per_image": float(np.mean(terms["bce"]) * math.prod(ctx.dataset.image_shape))}, {}


PART = Reconstruction()
