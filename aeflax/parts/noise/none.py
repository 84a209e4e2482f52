"""No corruption: the encoder reads the clean image."""

from __future__ import annotations

from dataclasses import dataclass

from aeflax.parts import Noise


@dataclass
class Fields:
    fixed: bool = False  # draw the noise once per image (the Keras tutorial's protocol)


class NoNoise(Noise):
    name = "none"
    Fields = Fields


PART = NoNoise()
