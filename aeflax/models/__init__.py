"""Flax NNX autoencoders built from config: encoder + bottleneck + decoder."""

from __future__ import annotations

from flax import nnx

from aeflax import parts
from aeflax.models.autoencoder import OWNED, Autoencoder
from aeflax.models.conv import ConvDecoder, ConvEncoder
from aeflax.models.dense import DenseDecoder, DenseEncoder
from aeflax.models.lenet import LeNetDecoder, LeNetEncoder

__all__ = ["OWNED", "Autoencoder", "build"]


def build(model_cfg, bottleneck_cfg, image_shape, rngs: nnx.Rngs, num_train: int = 0) -> Autoencoder:
    """Compose the Autoencoder that `model` and `bottleneck` configs describe; `num_train`, the
    training split's size, sizes what a prior over the training images keeps (bottleneck=exemplar)."""
    m, b = model_cfg, bottleneck_cfg
    if m.architecture == "dense":
        encoder = DenseEncoder(image_shape, list(m.hidden), m.activation, rngs, m.init)
    elif m.architecture == "lenet":
        encoder = LeNetEncoder(image_shape, list(m.conv.channels), m.conv.kernel_size, m.hidden[0],
                               m.activation, rngs, m.init, impl=m.conv.impl)
    else:
        encoder = ConvEncoder(image_shape, list(m.conv.channels), m.conv.kernel_size, m.conv.stride,
                              m.activation, rngs, m.init, impl=m.conv.impl)
    map_channels = encoder.out_shape[-1] if m.architecture == "conv" else 0
    # the chosen bottleneck part builds its module (aeflax/parts/bottleneck/)
    part = parts.registry()["bottleneck"][b.kind]
    bottleneck, code_size = part.build(b, encoder.out_features, map_channels, rngs, m.init)
    part.attach(b, bottleneck, encoder, image_shape, rngs)  # e.g. a prior that reads the encoder
    part.attach_exemplars(b, bottleneck, num_train)  # e.g. the cache of the training images' codes
    if m.architecture == "dense":
        dec_hidden = list(reversed(m.hidden)) if m.decoder_hidden is None else list(m.decoder_hidden)
        decoder = DenseDecoder(code_size, image_shape, dec_hidden, m.activation, rngs, m.init)
    elif m.architecture == "lenet":
        decoder = LeNetDecoder(code_size, image_shape, list(m.conv.channels), m.conv.kernel_size, m.hidden[0],
                               m.activation, rngs, m.init, impl=m.conv.impl)
    else:
        decoder = ConvDecoder(code_size, image_shape, list(m.conv.channels), m.conv.kernel_size,
                              m.conv.stride, m.activation, rngs, m.init, impl=m.conv.impl)
    return Autoencoder(encoder, bottleneck, decoder, m.output_activation)
