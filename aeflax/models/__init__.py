"""Flax NNX autoencoders built from config: encoder + bottleneck + decoder."""

from __future__ import annotations

from flax import nnx

from aeflax.models.autoencoder import Autoencoder
from aeflax.models.bottlenecks import Deterministic, Gaussian, Identity, VectorQuantized
from aeflax.models.conv import ConvDecoder, ConvEncoder
from aeflax.models.dense import DenseDecoder, DenseEncoder

__all__ = ["Autoencoder", "build"]


def build(model_cfg, bottleneck_cfg, image_shape, rngs: nnx.Rngs) -> Autoencoder:
    """Compose the Autoencoder that `model` and `bottleneck` configs describe."""
    m, b = model_cfg, bottleneck_cfg
    if m.architecture == "dense":
        encoder = DenseEncoder(image_shape, list(m.hidden), m.activation, rngs, m.init)
    else:
        encoder = ConvEncoder(image_shape, list(m.conv.channels), m.conv.kernel_size, m.conv.stride,
                              m.activation, rngs, m.init, impl=m.conv.impl)
    map_channels = encoder.out_shape[-1] if m.architecture == "conv" else 0
    bottleneck, code_size = _bottleneck(b, encoder.out_features, map_channels, rngs, m.init)
    if m.architecture == "dense":
        dec_hidden = list(reversed(m.hidden)) if m.decoder_hidden is None else list(m.decoder_hidden)
        decoder = DenseDecoder(code_size, image_shape, dec_hidden, m.activation, rngs, m.init)
    else:
        decoder = ConvDecoder(code_size, image_shape, list(m.conv.channels), m.conv.kernel_size,
                              m.conv.stride, m.activation, rngs, m.init, impl=m.conv.impl)
    return Autoencoder(encoder, bottleneck, decoder, m.output_activation)


def _bottleneck(b, in_features: int, map_channels: int, rngs: nnx.Rngs, init: str):
    """The bottleneck module and the size of the vector code it hands the decoder (0: a map).

    `map_channels` > 0 means the encoder emits a feature map (conv): identity and
    vector-quantized bottlenecks keep it a map, the others flatten it into a vector code.
    """
    if b.kind == "deterministic":
        return Deterministic(in_features, b.code_size, b.activation, b.top_k, rngs, init), b.code_size
    if b.kind == "gaussian":
        return Gaussian(in_features, b.code_size, rngs, init), b.code_size
    if b.kind == "vq":
        vq = VectorQuantized(in_features, b.code_size, b.embedding_dim, b.codebook_size, b.ema_decay,
                             rngs, init, channels=map_channels)
        return vq, 0 if map_channels else b.code_size
    if b.kind == "identity":
        return Identity(), 0
    raise ValueError(f"bottleneck.kind={b.kind!r} is not built here")
