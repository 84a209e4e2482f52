"""The LeNet-type autoencoder of Ruff et al. (Deep SVDD, ICML 2018; Deep SAD, ICLR 2020).

Written to compute what the authors' PyTorch code computes (Deep-SAD-PyTorch,
src/networks/fmnist_LeNet.py), because their CAE baseline is reproduced with it:

- encoder: per entry of `channels`, Conv(k x k, stride 1, 'same', no bias) -> BatchNorm ->
  activation -> 2x2 max-pool; then Dense(hidden, no bias) -> BatchNorm -> activation. The code
  layer (their fc2) is the bottleneck's Dense;
- decoder: Dense(hidden, no bias) -> BatchNorm -> a (s0, s0, hidden / s0^2) map -> activation;
  then per level: nearest 2x upsampling -> Conv(k x k, no bias), cropped to the encoder's size at
  that level (their ConvTranspose2d(stride 1, padding p) is a 'same' conv cropped by p - (k-1)/2
  a side), BatchNorm and activation except after the last, which gives the logits.

BatchNorm is PyTorch's with affine=False (`BatchNorm`): no scale or offset, eps 1e-4, and running
statistics that average the unbiased batch variance with momentum 0.1. Every layer here is
followed by BatchNorm or is the last one, so no layer has a bias (a bias before BatchNorm would
cancel). The model starts in evaluation mode (running statistics); `Autoencoder` switches it to
batch statistics for the training objective only.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax.checks import ConfigError
from aeflax.models.conv import apply_conv, apply_upsampled_conv, in_forward_mode
from aeflax.models.layers import INITIALIZERS, activation

BN_EPS, BN_MOMENTUM = 1e-4, 0.1  # torch.nn.BatchNorm2d(eps=1e-04) as the authors set it; torch's momentum


class BatchNorm(nnx.Module):
    """torch.nn.BatchNorm{1,2}d(affine=False) over the last axis.

    Training (use_running_average False): normalise by the batch mean and biased variance, and
    move the running mean and the running *unbiased* variance by `momentum` towards them.
    Evaluation: normalise by the running statistics. `use_running_average` is the attribute
    nnx's set_attributes / train() / eval() switch.
    """

    def __init__(self, features: int, eps: float = BN_EPS, momentum: float = BN_MOMENTUM):
        self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))
        self.eps, self.momentum = eps, momentum
        self.use_running_average = True

    def __call__(self, x):
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
            return (x - mean) * jax.lax.rsqrt(var + self.eps)
        mean, var = _batch_moments(x)  # the same ops as normalize's: XLA computes them once (2 dots, not 4)
        n = math.prod(x.shape[:-1])
        m = self.momentum
        self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
        self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(var) * n / max(n - 1, 1)
        if in_forward_mode():  # normalize's custom VJP has no forward mode
            return (x - mean) * jax.lax.rsqrt(var + self.eps)
        return normalize(x, self.eps)


def _channel_means(x):
    """Means over every axis but the last: first over the batch, as a matmul with ones (XLA:CPU's
    reduction of many rows to a few channels took longer than the convs around it), then over the
    pixels. Two short sums, as accurate as jnp.mean."""
    n = x.shape[0]
    per_pixel = (jnp.ones((1, n), x.dtype) @ x.reshape(n, -1)).reshape(-1, x.shape[-1])
    return jnp.sum(per_pixel, axis=0) / (x.size // x.shape[-1])


def _batch_moments(x):
    """(mean, biased variance) of each channel, the variance from the centred values."""
    mean = _channel_means(x)
    centred = x - mean
    return mean, _channel_means(centred * centred)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def normalize(x, eps: float):
    """(x - mean) / sqrt(var + eps) with the batch's mean and biased variance over every axis but the
    last; its gradient written out so that its two sums go together (_channel_means)."""
    return _normalize_fwd(x, eps)[0]


def _normalize_fwd(x, eps):
    mean, var = _batch_moments(x)
    scale = jax.lax.rsqrt(var + eps)
    xhat = (x - mean) * scale
    return xhat, (xhat, scale)


def _normalize_bwd(eps, res, dy):
    """dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)), the means over every axis but the last."""
    xhat, scale = res
    c = xhat.shape[-1]
    means = _channel_means(jnp.concatenate([dy, dy * xhat], axis=-1))
    return (scale * (dy - means[:c] - xhat * means[c:]),)


normalize.defvjp(_normalize_fwd, _normalize_bwd)


def _kernel_init(init: str, transposed: bool):
    """The kernel initialiser; `pytorch_uniform` of a layer that is a ConvTranspose2d in the
    authors' code draws with PyTorch's fan of that layer (out_channels * k * k, not in_channels)."""
    if init == "pytorch_uniform" and transposed:
        return nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=-1, out_axis=-2)
    return INITIALIZERS[init]


def _conv(n_in, n_out, kernel, rngs, init, transposed=False):
    return nnx.Conv(n_in, n_out, (kernel, kernel), padding="SAME", use_bias=False,
                    kernel_init=_kernel_init(init, transposed), rngs=rngs)


def max_pool2(x):
    """2x2 max-pooling, stride 2, of an even-sized map."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def crop_to(x, size: int):
    """The centre size x size window of a square map."""
    cut = (x.shape[1] - size) // 2
    return x if cut == 0 else x[:, cut: cut + size, cut: cut + size, :]


def level_sizes(image_shape, channels) -> tuple[int, ...]:
    """The encoder's map size before each pooling (28, 14 for 28x28 and two levels)."""
    h, w, _ = image_shape
    if h != w:
        raise ConfigError(f"model.architecture=lenet needs square images, these are {h}x{w}")
    sizes = []
    for _ in channels:
        if h % 2:
            raise ConfigError(f"model.architecture=lenet: a {h}x{h} map cannot be 2x2-pooled; use fewer "
                              f"model.conv.channels (the image is {image_shape[0]}x{image_shape[1]})")
        sizes.append(h)
        h //= 2
    return tuple(sizes)  # a tuple: the model's graph (a compiled program's key) must be hashable


class LeNetEncoder(nnx.Module):
    def __init__(self, image_shape, channels, kernel, hidden, act, rngs, init="pytorch_uniform",
                 impl: str = "auto"):
        self.sizes = level_sizes(image_shape, channels)
        ins = [image_shape[-1], *channels[:-1]]
        self.convs = nnx.List([_conv(a, b, kernel, rngs, init) for a, b in zip(ins, channels, strict=True)])
        self.norms = nnx.List([BatchNorm(c) for c in channels])
        bottom = self.sizes[-1] // 2
        self.dense = nnx.Linear(bottom * bottom * channels[-1], hidden, use_bias=False,
                                kernel_init=INITIALIZERS[init], rngs=rngs)
        self.dense_norm = BatchNorm(hidden)
        self.act = activation(act)
        self.impl = impl
        self.out_shape = (hidden,)
        self.out_features = hidden

    def __call__(self, x):
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = max_pool2(self.act(norm(apply_conv(conv, x, self.impl))))
        flat = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # torch's (C, H, W) order of .view
        return self.act(self.dense_norm(self.dense(flat)))


class LeNetDecoder(nnx.Module):
    """Dense from the code to an (s0, s0, hidden / s0^2) map, s0 = ceil(bottom / 2) (4 for 28x28),
    then one upsampling conv per level: s0 -> 2 s0 -> encoder sizes in reverse (8, 14, 28)."""

    def __init__(self, code_size, image_shape, channels, kernel, hidden, act, rngs, init="pytorch_uniform",
                 impl: str = "auto"):
        sizes = level_sizes(image_shape, channels)
        self.start = math.ceil(sizes[-1] // 2 / 2)
        if hidden % (self.start * self.start):
            raise ConfigError(f"model.hidden=[{hidden}] must be a multiple of {self.start * self.start} for "
                              f"model.architecture=lenet (the decoder reshapes it to "
                              f"{self.start}x{self.start} maps)")
        start_channels = hidden // (self.start * self.start)
        self.dense = nnx.Linear(code_size, hidden, use_bias=False, kernel_init=INITIALIZERS[init], rngs=rngs)
        self.dense_norm = BatchNorm(hidden)
        outs = [*reversed(channels), image_shape[-1]]
        ins = [start_channels, *outs[:-1]]
        self.convs = nnx.List([_conv(a, b, kernel, rngs, init, transposed=True)
                               for a, b in zip(ins, outs, strict=True)])
        self.norms = nnx.List([BatchNorm(c) for c in outs[:-1]])
        self.targets = (2 * self.start, *reversed(sizes))
        self.act = activation(act)
        self.impl = impl

    def __call__(self, z):
        h = self.dense_norm(self.dense(z))
        x = self.act(h.reshape(z.shape[0], -1, self.start, self.start).transpose(0, 2, 3, 1))  # torch's .view
        last = len(self.convs) - 1
        for i, (conv, size) in enumerate(zip(self.convs, self.targets, strict=True)):
            x = crop_to(apply_upsampled_conv(conv, x, self.impl), size)
            if i < last:
                x = self.act(self.norms[i](x))
        return x
