"""Strided-conv encoder and transposed-conv decoder (the tutorial's conv autoencoder).

The parameters live in plain `nnx.Conv` / `nnx.ConvTranspose` layers; how a layer is
computed is chosen by `impl`:

- "native": XLA's convolution (`layer(x)`), the fast path on GPU and TPU;
- "im2col": the same numbers as matmuls, the fast path on CPU, where XLA's convolutions
  (and above all their gradients) are several times slower than a matmul of the same
  FLOPs. A conv gathers its k*k shifted, strided views of the padded input into one
  patch matrix and does one matmul; a transposed conv is computed per output phase (no
  zeros inserted or multiplied), and so is a 2x nearest upsampling followed by a conv
  (LeNet's decoder: one transposed conv with the taps summed). Their gradients are written
  out too (custom VJPs): each is one patch matrix and one or two matmuls, where JAX's
  autodiff of the patch gather added the k*k gradient views back one by one, each a pass
  over the whole input; a conv whose input takes no gradient (the image) skips that one;
- "auto" (default): "im2col" on CPU, "native" elsewhere.

Both give the numbers of the native convolution (float tolerance; see
tests/test_perf_equivalence.py), and the parameter tree is the same for every impl, so a
checkpoint trained with one restores into another.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.custom_derivatives import SymbolicZero

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


def _transpose_pad(k: int, s: int) -> int:
    """Leading pad of lax.conv_transpose(padding='SAME') on the dilated input."""
    return k - 1 if s > k - 1 else math.ceil((k + s - 2) / 2)


def _pad_for_windows(x, k: int, s: int, lead, out_hw):
    """x with `lead` (rows, columns) leading zeros and the trailing zeros that out_hw windows need."""
    trail = [max(0, (o - 1) * s + k - p - n) for o, p, n in zip(out_hw, lead, x.shape[1:3], strict=True)]
    return jnp.pad(x, ((0, 0), (lead[0], trail[0]), (lead[1], trail[1]), (0, 0)))


def _patches(xp, k: int, s: int, out_hw):
    """[N, ho, wo, k*k*C]: the k*k strided views of a padded input side by side (im2col)."""
    ho, wo = out_hw
    return jnp.concatenate([xp[:, i: i + (ho - 1) * s + 1: s, j: j + (wo - 1) * s + 1: s, :]
                            for i in range(k) for j in range(k)], axis=-1)


def _flip(kernel):
    """The adjoint's kernel: taps reversed, input and output channels swapped."""
    return kernel[::-1, ::-1].transpose(0, 1, 3, 2)


def _phase_taps(k: int, s: int, p: int):
    """(lowest input offset, window m, taps [m, s]) of a dilated conv along one axis: output row
    a*s + r reads input row a + lo + d through kernel tap taps[d, r] (k: no tap, a zero)."""
    offsets = [(r + i - p) // s for r in range(s) for i in range(k) if (r + i - p) % s == 0]
    lo, m = min(offsets), max(offsets) - min(offsets) + 1
    taps = np.full((m, s), k)
    for d in range(m):
        for r in range(s):
            if 0 <= (i := (lo + d) * s + p - r) < k:
                taps[d, r] = i
    return lo, m, taps


def _dilated_conv(x, kernel, s: int, lead, out_hw):
    """out[o] = sum_i xd[o + i] kernel[i] per axis, xd = x dilated by s (s - 1 zeros between rows) after
    `lead` zeros: the transposed conv, and a strided conv's input gradient, without inserted zeros.

    Output row a*s + r (phase r) sums the taps i with (r + i - lead) divisible by s, reading input
    row a + (r + i - lead) / s: every phase is a stride-1 conv of the undilated input, so one
    im2col over the window of offsets, one matmul to s*s*C_out columns (a kernel assembled from
    the taps, zeros where a phase has none), and a depth-to-space reshape interleaves the phases.
    """
    k, _, c_in, c_out = kernel.shape
    n, h, w, _ = x.shape
    (lo_h, m_h, taps_h), (lo_w, m_w, taps_w) = (_phase_taps(k, s, p) for p in lead)
    a_h, a_w = (math.ceil(o / s) for o in out_hw)
    xp = jnp.pad(x, ((0, 0), (max(-lo_h, 0), max(a_h + lo_h + m_h - 1 - h, 0)),
                     (max(-lo_w, 0), max(a_w + lo_w + m_w - 1 - w, 0)), (0, 0)))
    o_h, o_w = max(lo_h, 0), max(lo_w, 0)  # where offset lo starts in the padded input
    patches = jnp.concatenate([xp[:, o_h + dh: o_h + dh + a_h, o_w + dw: o_w + dw + a_w, :]
                               for dh in range(m_h) for dw in range(m_w)], axis=-1)
    with_zero = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap k: a zero block
    taps = with_zero[taps_h[:, None, :, None], taps_w[None, :, None, :]]  # [m_h, m_w, s, s, C_in, C_out]
    assembled = taps.transpose(0, 1, 4, 2, 3, 5).reshape(m_h * m_w * c_in, s * s * c_out)
    y = (patches @ assembled).reshape(n, a_h, a_w, s, s, c_out).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, a_h * s, a_w * s, c_out)[:, :out_hw[0], :out_hw[1], :]


def _shift_add(x, kernel, s: int, pads, out_hw):
    """A narrowing conv: one matmul to k*k*C_out columns per input pixel, then each tap's columns
    shifted into place and summed (output (a, b) reads input (a*s + i - pt, b*s + j - pl))."""
    k, _, c_in, c_out = kernel.shape
    ho, wo = out_hw
    cols = _pad_for_windows(x @ kernel.transpose(2, 0, 1, 3).reshape(c_in, k * k * c_out), k, s, pads, out_hw)
    cols = jnp.moveaxis(cols.reshape(*cols.shape[:3], k * k, c_out), 3, 0)
    return sum(cols[i * k + j, :, i: i + (ho - 1) * s + 1: s, j: j + (wo - 1) * s + 1: s]
               for i in range(k) for j in range(k))


def _grads_from_dy_patches(x, kernel, dy, s: int, lead):
    """(dx, dkernel) of an op whose input gradient is dx[u] = sum_i dyp[u*s + i] flip(kernel)[i]
    (dyp: dy after `lead` zeros): a stride-1 conv and a transposed conv. The same patch matrix of dy
    gives the kernel gradient, dkernel[k-1-i] = sum_u x[u] dyp[u*s + i]: two matmuls."""
    k, _, c_in, c_out = kernel.shape
    hw = x.shape[1:3]
    patches = _patches(_pad_for_windows(dy, k, s, lead, hw), k, s, hw).reshape(-1, k * k * c_out)
    dx = (patches @ _flip(kernel).reshape(k * k * c_out, c_in)).reshape(x.shape)
    dk = (x.reshape(-1, c_in).T @ patches).reshape(c_in, k, k, c_out).transpose(1, 2, 0, 3)[::-1, ::-1]
    return dx, dk


def _conv_values(x, kernel, s: int, pads, out_hw):
    """(y, im2col patches or None): im2col (k*k*C_in values per output pixel) or shift-add (k*k*C_out
    per input pixel), whichever intermediate is smaller."""
    k, _, c_in, c_out = kernel.shape
    if out_hw[0] * out_hw[1] * c_in <= x.shape[1] * x.shape[2] * c_out:
        patches = _patches(_pad_for_windows(x, k, s, pads, out_hw), k, s, out_hw)
        return patches @ kernel.reshape(k * k * c_in, c_out), patches
    return _shift_add(x, kernel, s, pads, out_hw), None


def _strided_values(x, kernel, s: int):
    """(y, im2col patches or None) of `nnx.Conv(padding='SAME', strides=s)`."""
    k = kernel.shape[0]
    h, w = x.shape[1:3]
    return _conv_values(x, kernel, s, (_same_pads(h, k, s)[0], _same_pads(w, k, s)[0]),
                        (math.ceil(h / s), math.ceil(w / s)))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_conv(x, kernel, s: int):
    return _strided_values(x, kernel, s)[0]


def _matmul_conv_fwd(x, kernel, s):
    """The values, and what the gradients need. `x.perturbed` is False where nothing asks for the
    input gradient (a first layer's input, the image): then only the kernel gradient is computed,
    from x's patches when they are narrower than dy's (C_in < C_out: LeNet's 1 -> 16 first layer
    spent most of its step building dy's 16 times wider ones for both gradients)."""
    input_grad = x.perturbed
    x, kernel = x.value, kernel.value
    y, patches = _strided_values(x, kernel, s)
    c_in, c_out = kernel.shape[2:]
    keep = s > 1 or (not input_grad and c_in < c_out)  # the patches the kernel gradient reads
    return y, (x, kernel, patches if keep else None, input_grad)


def _matmul_conv_bwd(s, res, dy):
    """A stride-1 conv: both gradients from one patch matrix of dy (k*k*C_out columns), unless only
    the kernel's is asked for and x's patches are narrower. A strided conv: the kernel gradient from
    x's patches, the input gradient by phases."""
    x, kernel, patches, input_grad = res
    if isinstance(dy, SymbolicZero):  # the output took no part in the loss
        return (jnp.zeros_like(x) if input_grad else None), jnp.zeros_like(kernel)
    k, _, c_in, c_out = kernel.shape
    n, h, w, _ = x.shape
    pads = (_same_pads(h, k, s)[0], _same_pads(w, k, s)[0])
    lead = (k - 1 - pads[0], k - 1 - pads[1])
    if s == 1 and patches is None:
        dx, dk = _grads_from_dy_patches(x, kernel, dy, 1, lead)
        return (dx if input_grad else None), dk
    if patches is None:  # a strided shift-add conv: the patches for its kernel gradient
        patches = _patches(_pad_for_windows(x, k, s, pads, dy.shape[1:3]), k, s, dy.shape[1:3])
    dk = (patches.reshape(-1, k * k * c_in).T @ dy.reshape(-1, c_out)).reshape(kernel.shape)
    return (_dilated_conv(dy, _flip(kernel), s, lead, (h, w)) if input_grad else None), dk


_matmul_conv.defvjp(_matmul_conv_fwd, _matmul_conv_bwd, symbolic_zeros=True)


def _dilated_values(x, kernel, s: int, lead: int):
    """The s-times larger output of _dilated_conv with `lead` zeros before the dilated input."""
    return _dilated_conv(x, kernel, s, (lead, lead), (x.shape[1] * s, x.shape[2] * s))


_matmul_dilated = partial(jax.custom_vjp, nondiff_argnums=(2, 3))(_dilated_values)


def _matmul_dilated_fwd(x, kernel, s, lead):
    return _matmul_dilated(x, kernel, s, lead), (x, kernel)


def _matmul_dilated_bwd(s, lead, res, dy):
    x, kernel = res
    k = kernel.shape[0]
    return _grads_from_dy_patches(x, kernel, dy, s, (k - 1 - lead, k - 1 - lead))


_matmul_dilated.defvjp(_matmul_dilated_fwd, _matmul_dilated_bwd)


def _conv_transpose_values(x, kernel, s: int):
    return _dilated_values(x, kernel, s, _transpose_pad(kernel.shape[0], s))


def _matmul_conv_transpose(x, kernel, s: int):
    return _matmul_dilated(x, kernel, s, _transpose_pad(kernel.shape[0], s))


def _upsampling_kernel(kernel):
    """The (k+1) x (k+1) kernel of a stride-2 transposed conv equal to 2x nearest upsampling then a
    stride-1 conv with `kernel`: upsampling repeats each input pixel in a 2x2 block, so each output
    pixel reads an input pixel through the sum of the 2x2 taps that fall on its block."""
    padded = jnp.pad(kernel, ((1, 1), (1, 1), (0, 0), (0, 0)))
    return padded[1:, 1:] + padded[:-1, 1:] + padded[1:, :-1] + padded[:-1, :-1]


@jax.custom_vjp
def _add_bias(y, bias):
    return y + bias


def _add_bias_fwd(y, bias):
    return y + bias, None


def _add_bias_bwd(_, dy):
    """The bias gradient as a matvec (ones @ dy): XLA:CPU's column sum over every pixel of the batch
    took longer than the layer's matmuls (1.1 ms of a 10 ms step for the 8 -> 16 transposed conv)."""
    columns = dy.reshape(-1, dy.shape[-1])
    return dy, (jnp.ones((1, columns.shape[0]), dy.dtype) @ columns)[0]


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


_FORWARD_MODE = contextvars.ContextVar("aeflax_conv_forward_mode", default=False)


@contextlib.contextmanager
def forward_mode():
    """Convs traced inside leave out their custom VJPs, which JAX cannot differentiate in forward mode
    (jax.jvp, jax.jacfwd through a model: RAE-GP's decoder Jacobian); the same values."""
    token = _FORWARD_MODE.set(True)
    try:
        yield
    finally:
        _FORWARD_MODE.reset(token)


def in_forward_mode() -> bool:
    """Inside forward_mode(): layers with a custom VJP compute their plain formulation."""
    return _FORWARD_MODE.get()


CHUNK = 32  # images per slice of a larger batch (_by_chunks)


def _by_chunks(op, x, kernel, stride: int):
    """op(x, kernel, stride) on CHUNK images at a time (lax.map), the images past the last whole
    chunk in one more call: a batch of 256 (or an evaluation batch of 1000) builds patch matrices
    of tens of MB, past the CPU's caches, and its epoch took longer than at batch 32. Each image's
    values are a matmul's rows, so they do not depend on the chunks but through the matmul kernel's
    rounding; the kernel gradient sums the chunks' (another order of the same sum)."""
    n = x.shape[0]
    if n <= CHUNK:
        return op(x, kernel, stride)
    whole = n - n % CHUNK
    y = jax.lax.map(lambda xc: op(xc, kernel, stride), x[:whole].reshape(whole // CHUNK, CHUNK, *x.shape[1:]))
    y = y.reshape(whole, *y.shape[2:])
    return y if whole == n else jnp.concatenate([y, op(x[whole:], kernel, stride)])


def _with_bias(y, bias):
    if bias is None:
        return y
    return y + bias if _FORWARD_MODE.get() else _add_bias(y, bias)


def conv_im2col(x, kernel, bias, stride: int):
    """`nnx.Conv(padding='SAME')` as matmuls, forward and backward (a custom VJP: XLA's autodiff of
    the patch gather adds the k*k gradient views back one at a time, one pass over the input each).

    Forward: im2col or shift-add, whichever intermediate is smaller (shift-add when the conv
    narrows, e.g. the decoder's last 16 -> 1 layer). Backward: the kernel gradient is one matmul
    (patches^T dy), the input gradient is the transposed conv of dy, by phases (_dilated_conv).
    """
    if _FORWARD_MODE.get():
        return _with_bias(_strided_values(x, kernel, stride)[0], bias)
    return _with_bias(_by_chunks(_matmul_conv, x, kernel, stride), bias)


def conv_transpose_phases(x, kernel, bias, stride: int):
    """`nnx.ConvTranspose(padding='SAME')` (output = input size * stride) without inserted zeros:
    the phases of _dilated_conv forward; backward both gradients from one patch matrix of dy (the
    input gradient is a strided conv of dy)."""
    if _FORWARD_MODE.get():
        return _with_bias(_conv_transpose_values(x, kernel, stride), bias)
    return _with_bias(_by_chunks(_matmul_conv_transpose, x, kernel, stride), bias)


def upsampled_conv_phases(x, kernel, bias):
    """`nnx.Conv(padding='SAME', stride 1)` of x upsampled 2x by nearest neighbours, as the phases of a
    stride-2 transposed conv (_upsampling_kernel): per input pixel (k+1)^2 taps to 2x2 outputs, where
    the conv of the upsampled map multiplies k^2 taps at each of the 4 outputs (36 against 100 for
    k = 5), and no upsampled map is built or differentiated."""
    k = kernel.shape[0]
    merged = _upsampling_kernel(kernel)
    lead = (k - 1) // 2 + 1  # the conv's 'SAME' lead on the upsampled map, one more for the box's tap
    if _FORWARD_MODE.get():
        return _with_bias(_dilated_values(x, merged, 2, lead), bias)
    return _with_bias(_by_chunks(lambda xc, kc, s: _matmul_dilated(xc, kc, s, lead), x, merged, 2), bias)


def upsample2(x):
    """Nearest-neighbour 2x upsampling (F.interpolate(scale_factor=2))."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _stride(layer) -> int:
    return layer.strides if isinstance(layer.strides, int) else layer.strides[0]


def apply_conv(layer: nnx.Conv, x, impl: str):
    if resolve_impl(impl) == "native":
        return layer(x)
    bias = layer.bias[...] if layer.bias is not None else None
    return conv_im2col(x, layer.kernel[...], bias, _stride(layer))


def apply_upsampled_conv(layer: nnx.Conv, x, impl: str):
    """`layer` (a stride-1 'SAME' conv) applied to x upsampled 2x by nearest neighbours."""
    if resolve_impl(impl) == "native":
        return layer(upsample2(x))
    bias = layer.bias[...] if layer.bias is not None else None
    return upsampled_conv_phases(x, layer.kernel[...], bias)


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
