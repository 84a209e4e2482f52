"""Strided-conv encoder and transposed-conv decoder (the tutorial's conv autoencoder).

The parameters live in plain `nnx.Conv` / `nnx.ConvTranspose` layers; how a layer is
computed is chosen by `impl`:

- "native": XLA's convolution (`layer(x)`), the fast path on GPU and TPU;
- "im2col": the same numbers as matmuls, the fast path on CPU, where XLA's convolutions
  (and above all their gradients) are several times slower than a matmul of the same
  FLOPs. A conv gathers its k*k shifted, strided views of the padded input into one
  patch matrix and does one matmul; a transposed conv does one matmul to k*k*C_out
  columns and adds the k*k column blocks back at their strided output positions
  ("col2im"), so no zeros are ever inserted or multiplied;
- "auto" (default): "im2col" on CPU, "native" elsewhere.

Both give the numbers of the native convolution (float tolerance; see
tests/test_perf_equivalence.py), and the parameter tree is the same for every impl, so a
checkpoint trained with one restores into another.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from aeflax.models.layers import INITIALIZERS, activation, dense

IMPLS = ("auto", "native", "im2col")


def _conv(n_in, n_out, kernel, stride, rngs, init):
    return nnx.Conv(n_in, n_out, (kernel, kernel), strides=stride, padding="SAME",
                    kernel_init=INITIALIZERS[init], rngs=rngs)


def _conv_transpose(n_in, n_out, kernel, stride, rngs, init):
    return nnx.ConvTranspose(n_in, n_out, (kernel, kernel), strides=stride, padding="SAME",
                             kernel_init=INITIALIZERS[init], rngs=rngs)


def resolve_impl(impl: str) -> str:
    """'auto' -> 'im2col' on CPU, 'native' on accelerators."""
    if impl not in IMPLS:
        raise ValueError(f"model.conv.impl={impl!r} is not known; choose one of {', '.join(IMPLS)}")
    if impl == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "native"
    return impl


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """XLA's 'SAME' padding of a strided conv: output ceil(size / s)."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def conv_im2col(x, kernel, bias, stride: int):
    """`nnx.Conv(padding='SAME')` as matmuls; the smaller of two intermediates is materialized.

    im2col: k*k strided views of the padded input side by side, one matmul (k*k*C_in
    values per output pixel). Shift-add: one matmul to k*k*C_out columns per input pixel,
    then each tap's columns are shifted into place and summed. The second wins when the
    conv narrows (e.g. the last 16 -> 1 layer of the decoder).
    """
    k, _, c_in, c_out = kernel.shape
    n, h, w, _ = x.shape
    (pt, pb), (pl, pr) = _same_pads(h, k, stride), _same_pads(w, k, stride)
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    if ho * wo * c_in <= h * w * c_out:
        xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        views = [xp[:, i: i + (ho - 1) * stride + 1: stride, j: j + (wo - 1) * stride + 1: stride, :]
                 for i in range(k) for j in range(k)]
        y = jnp.concatenate(views, axis=-1) @ kernel.reshape(k * k * c_in, c_out)
    else:  # tap-major columns: tap (i, j) is the block of C_out columns number i*k + j
        cols = x @ kernel.transpose(2, 0, 1, 3).reshape(c_in, k * k * c_out)
        high_h, high_w = max(0, (ho - 1) * stride + k - pt - h), max(0, (wo - 1) * stride + k - pl - w)
        cols = jnp.pad(cols, ((0, 0), (pt, high_h), (pl, high_w), (0, 0)))
        # split, not an index per tap: an index's gradient is a zero-padded copy of all the
        # columns per tap (k*k of them summed), a split's is one concatenation
        taps = jnp.split(cols, k * k, axis=-1)
        y = sum(taps[i * k + j][:, i: i + (ho - 1) * stride + 1: stride, j: j + (wo - 1) * stride + 1: stride]
                for i in range(k) for j in range(k))  # output (a, b) reads input (a*s + i - pt, b*s + j - pl)
    return y + bias if bias is not None else y


def _transpose_pad(k: int, s: int) -> int:
    """Leading pad of lax.conv_transpose(padding='SAME') on the dilated input."""
    return k - 1 if s > k - 1 else math.ceil((k + s - 2) / 2)


def conv_transpose_phases(x, kernel, bias, stride: int):
    """`nnx.ConvTranspose(padding='SAME')` (output = input size * stride) without inserted zeros.

    Output row a*s + r (phase r) sums taps i with (r + i - p) divisible by s, reading input
    row a + (r + i - p) / s (p: the native op's leading pad). So every phase is a small
    stride-1 conv of the undilated input: one im2col over the window of offsets, one
    matmul to s*s*C_out columns (a kernel assembled from the taps, zeros where a phase
    has no tap), and a depth-to-space reshape interleaves the phases.
    """
    k, _, c_in, c_out = kernel.shape
    n, h, w, _ = x.shape
    s, p = stride, _transpose_pad(k, stride)
    offsets = [(r + i - p) // s for r in range(s) for i in range(k) if (r + i - p) % s == 0]
    lo, hi = min(offsets), max(offsets)
    m = hi - lo + 1
    xp = jnp.pad(x, ((0, 0), (max(-lo, 0), max(hi, 0)), (max(-lo, 0), max(hi, 0)), (0, 0)))
    o = max(-lo, 0) + lo  # where offset `lo` starts in the padded input
    patches = jnp.concatenate([xp[:, o + dh: o + dh + h, o + dw: o + dw + w, :]
                               for dh in range(m) for dw in range(m)], axis=-1)
    zero = jnp.zeros((c_in, c_out), kernel.dtype)

    def tap(d, r):  # kernel index for window offset d and phase r (None: no tap)
        i = (lo + d) * s + p - r
        return i if 0 <= i < k else None

    rows = []
    for dh in range(m):
        for dw in range(m):
            blocks = []
            for rh in range(s):
                for rw in range(s):
                    ih, iw = tap(dh, rh), tap(dw, rw)
                    blocks.append(zero if ih is None or iw is None else kernel[ih, iw])
            rows.append(jnp.concatenate(blocks, axis=-1))  # [C_in, s*s*C_out]
    y = patches @ jnp.concatenate(rows, axis=0)  # [B, H, W, s*s*C_out]
    y = y.reshape(n, h, w, s, s, c_out).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * s, w * s, c_out)
    return y + bias if bias is not None else y


def _stride(layer) -> int:
    return layer.strides if isinstance(layer.strides, int) else layer.strides[0]


def apply_conv(layer: nnx.Conv, x, impl: str):
    if resolve_impl(impl) == "native":
        return layer(x)
    bias = layer.bias[...] if layer.bias is not None else None
    return conv_im2col(x, layer.kernel[...], bias, _stride(layer))


def apply_conv_transpose(layer: nnx.ConvTranspose, x, impl: str):
    if resolve_impl(impl) == "native":
        return layer(x)
    bias = layer.bias[...] if layer.bias is not None else None
    return conv_transpose_phases(x, layer.kernel[...], bias, _stride(layer))


def feature_shape(image_shape, channels, stride) -> tuple[int, int, int]:
    """Shape of the encoder's feature map ('same' padding: ceil(size / stride) per layer)."""
    h, w, _ = image_shape
    for _ in channels:
        h, w = math.ceil(h / stride), math.ceil(w / stride)
    return h, w, channels[-1]


class ConvEncoder(nnx.Module):
    def __init__(self, image_shape, channels, kernel, stride, act, rngs, init="glorot_uniform",
                 impl: str = "auto"):
        ins = [image_shape[-1], *channels[:-1]]
        self.layers = nnx.List([_conv(a, b, kernel, stride, rngs, init)
                                for a, b in zip(ins, channels, strict=False)])
        self.act = activation(act)
        self.impl = impl
        self.out_shape = feature_shape(image_shape, channels, stride)
        self.out_features = math.prod(self.out_shape)

    def __call__(self, x):
        for layer in self.layers:
            x = self.act(apply_conv(layer, x, self.impl))
        return x


class ConvDecoder(nnx.Module):
    """Optional Dense from a vector code to the feature map, transposed convs, a last Conv."""

    def __init__(self, code_size, image_shape, channels, kernel, stride, act, rngs,
                 init="glorot_uniform", impl: str = "auto"):
        self.start_shape = feature_shape(image_shape, channels, stride)
        self.project = dense(code_size, math.prod(self.start_shape), rngs, init) if code_size else None
        rev = list(reversed(channels))
        self.layers = nnx.List([_conv_transpose(a, b, kernel, stride, rngs, init)
                                for a, b in zip([channels[-1], *rev[:-1]], rev, strict=False)])
        self.out = _conv(rev[-1], image_shape[-1], kernel, 1, rngs, init)
        self.act = activation(act)
        self.impl = impl
        self.image_shape = tuple(image_shape)

    def __call__(self, z):
        if self.project is not None:
            z = self.act(self.project(z)).reshape(z.shape[0], *self.start_shape)
        for layer in self.layers:
            z = self.act(apply_conv_transpose(layer, z, self.impl))
        logits = apply_conv(self.out, z, self.impl)
        h, w, _ = self.image_shape  # crop when strides overshoot an odd size
        return logits[:, :h, :w, :] if logits.shape[1:3] != (h, w) else logits
