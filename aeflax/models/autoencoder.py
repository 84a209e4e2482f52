"""The Autoencoder: encoder -> bottleneck -> decoder, composed from config."""

from __future__ import annotations

import jax
from flax import nnx

from aeflax.models.layers import activation

# the attribute holding the modules that parts own (an nnx.Dict by part name; training.make_model adds
# it only when there are some): trained beside the model, each by its part's own optimizer
OWNED = "owned"


class Autoencoder(nnx.Module):
    """Any variant is this one module with different parts.

    Inputs are float images in [0, 1] shaped [B, H, W, C]. `train` chooses batch statistics over
    running ones in the layers that have both (BatchNorm, models/lenet.py). The decoder returns logits;
    `output_activation` turns them into the reconstruction (losses that want logits,
    such as Bernoulli likelihoods, use them directly for numerical stability).
    """

    def __init__(self, encoder, bottleneck, decoder, output_activation: str):
        self.encoder = encoder
        self.bottleneck = bottleneck
        self.decoder = decoder
        self.output_activation = output_activation

    def use_batch_statistics(self, train: bool) -> None:
        """Batch statistics (training) or running ones (the default) in every layer that has both.
        Only a layer whose mode changes is touched: nnx refuses to mutate a module inside a
        transform (a scan) that did not create it, which is how evaluation calls the model."""
        for _, module in nnx.iter_modules(self):
            if getattr(module, "use_running_average", not train) == train:
                module.use_running_average = not train

    def encode(self, x, *, key=None, train: bool = False) -> dict:
        self.use_batch_statistics(train)
        return self.bottleneck(self.encoder(x), key=key, train=train)

    def decode_logits(self, z) -> jax.Array:
        return self.decoder(z)

    def output(self, logits) -> jax.Array:
        """Decoder logits -> reconstruction (the mean of the decoder's likelihood)."""
        return activation(self.output_activation)(logits)

    def decode(self, z) -> jax.Array:
        return self.output(self.decoder(z))

    def sample(self, key, n: int) -> jax.Array:
        """n images decoded from the prior (bottlenecks that have one: the VAE family)."""
        if not hasattr(self.bottleneck, "prior_sample"):
            raise TypeError(f"sampling from the prior needs a bottleneck with a prior, this model has "
                            f"{type(self.bottleneck).__name__}")
        return self.decode(self.bottleneck.prior_sample(key, n))

    def __call__(self, x, *, key=None, train: bool = False) -> dict:
        out = self.encode(x, key=key, train=train)
        out["logits"] = self.decoder(out["code"])
        out["recon"] = self.output(out["logits"])
        return out
