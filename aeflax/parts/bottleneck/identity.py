"""No bottleneck layer: the conv encoder's feature map is the code (the tutorial's conv AE)."""

from __future__ import annotations

from flax import nnx

from aeflax.checks import check
from aeflax.parts import Bottleneck


class Identity(nnx.Module):
    """The encoder's output itself is the code."""

    def __init__(self):
        pass

    def __call__(self, h, *, key=None, train: bool = False):
        return {"code": h, "activation": h}


class IdentityPart(Bottleneck):
    name = "identity"
    activation_code = True

    def validate(self, cfg) -> None:
        check(not (self.active(cfg) and cfg.model.architecture == "dense"),
              "bottleneck.kind=identity is for conv models (the feature map is the code); use deterministic")

    def build(self, b, in_features, map_channels, rngs, init):
        return Identity(), 0

    def code_activation(self, cfg):
        return cfg.model.activation


PART = IdentityPart()
