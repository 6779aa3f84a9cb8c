"""Weight-normalised Dense / Conv / ConvTranspose with data-dependent initialisation.

The convolutions run through `pvpp.nn.conv_forms.conv` (XLA's convolution or an equal form, per layer and
direction).

W = g * V / ||V|| with the norm taken per output channel (Salimans & Kingma 2016). During `Module.init` each layer
computes its output with g = 1, b = 0 on the init batch, sets

    g = init_scale / sqrt(var + 1e-8),   b = -mean * g        (per output channel)

and returns the re-normalised output, so later layers calibrate on normalised inputs. Outside `init` the layer
is an ordinary affine map with the stored g, V, b.

Parameter names: `kernel` (V), `scale` (g), `bias` (b). Layouts: Dense kernel [C_in, C_out]; Conv kernel
[kh, kw, C_in, C_out] (HWIO); ConvTranspose kernel [kh, kw, C_in, C_out] with scatter semantics
out[s*i + k] += x[i] * V[k] (see `conv_transpose_full`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from pvpp.nn import conv_forms

# The variance floor of the data-dependent init: a channel that is constant on the init batch gets a large but
# finite scale instead of a division by zero (its centred output is exactly zero, so nothing blows up).
INIT_VARIANCE_EPS = 1e-8
# Floor under ||V||^2 so an all-zero direction cannot produce NaN.
KERNEL_NORM_EPS = 1e-12
_KERNEL_INIT = nn.initializers.normal(stddev=0.05)


class WNDense(nn.Module):
    """Weight-normalised dense layer over the last axis: [..., C_in] -> [..., features]."""

    features: int
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _KERNEL_INIT, (x.shape[-1], self.features))
        return weight_normed(self, kernel, lambda w: jnp.dot(x, w), self.init_scale)


class WNConv(nn.Module):
    """Weight-normalised 2-D convolution, NHWC. `padding` is a lax padding spec (explicit pairs or a string)."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "VALID"
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _KERNEL_INIT, (*self.kernel_size, x.shape[-1], self.features))

        return weight_normed(
            self, kernel, lambda w: conv_forms.conv(x, w, self.strides, self.padding), self.init_scale
        )


class WNConvTranspose(nn.Module):
    """Weight-normalised transposed convolution, NHWC, with scatter semantics (see `conv_transpose`).

    `padding` pads the s-dilated input before a stride-1 VALID convolution with the flipped kernel; the default
    (None) is the full output [B, (H-1)s+kh, (W-1)s+kw, features]. Smaller pads crop the output inside the
    convolution, so the data-dependent init sees exactly the output the layer returns.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Sequence[tuple[int, int]] | None = None
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _KERNEL_INIT, (*self.kernel_size, x.shape[-1], self.features))
        return weight_normed(
            self, kernel, lambda w: conv_transpose(x, w, self.strides, self.padding), self.init_scale
        )


def conv_transpose(
    x: jax.Array,
    kernel: jax.Array,
    strides: tuple[int, int],
    padding: Sequence[tuple[int, int]] | None = None,
) -> jax.Array:
    """Transposed convolution with scatter semantics: out[s*i + p, s*j + q] += x[i, j] @ kernel[p, q].

    x [B, H, W, C_in], kernel [kh, kw, C_in, C_out]. With the default padding ((kh-1, kh-1), (kw-1, kw-1)) the
    output is the full [B, (H-1)s+kh, (W-1)s+kw, C_out]; padding (lo, hi) instead keeps full-output rows
    kh-1-lo .. (H-1)s+kh-1+hi-(kh-1) (lower pads crop, larger pads add zeros).
    Implemented as a stride-1 convolution of the s-dilated input with the spatially flipped kernel (in the form
    `pvpp.nn.conv_forms` chooses for it).
    """
    kh, kw = kernel.shape[:2]
    if padding is None:
        padding = ((kh - 1, kh - 1), (kw - 1, kw - 1))
    return conv_forms.conv(x, kernel[::-1, ::-1], (1, 1), tuple(padding), lhs_dilation=strides)


def weight_normed(
    module: nn.Module,
    kernel: jax.Array,
    apply: Callable[[jax.Array], jax.Array],
    init_scale: float,
) -> jax.Array:
    """Applies `apply` (a linear map of the kernel) with a weight-normalised kernel plus a bias.

    The norm is taken over every kernel axis but the last (the output channels). During init, g and b are
    set from the statistics of the output on the init batch (mean and variance over all but the last axis)
    and the normalised output is returned.
    """
    features = kernel.shape[-1]
    direction = kernel_direction(kernel)
    if module.is_initializing():
        out = apply(direction)
        stat_axes = tuple(range(out.ndim - 1))
        mean = jnp.mean(out, axis=stat_axes)
        var = jnp.var(out, axis=stat_axes)
        scale = init_scale * jax.lax.rsqrt(var + INIT_VARIANCE_EPS)
        module.param("scale", lambda _: scale)
        module.param("bias", lambda _: -mean * scale)
        return (out - _along_last(mean, out.ndim)) * _along_last(scale, out.ndim)
    scale = module.param("scale", nn.initializers.ones, (features,))
    bias = module.param("bias", nn.initializers.zeros, (features,))
    out = apply(direction * _along_last(scale, kernel.ndim))
    return out + _along_last(bias, out.ndim)


def effective_kernel(params) -> tuple[jax.Array, jax.Array]:
    """(g * V / ||V||, b) of a trained weight-normalised layer's parameters {'kernel', 'scale', 'bias'}: the
    kernel and bias the layer applies outside `init` (for code that evaluates the layer piecewise)."""
    kernel = params["kernel"]
    return kernel_direction(kernel) * _along_last(params["scale"], kernel.ndim), params["bias"]


def kernel_direction(kernel: jax.Array) -> jax.Array:
    """V / ||V||, the norm taken per output channel (over every axis but the last)."""
    reduce_axes = tuple(range(kernel.ndim - 1))
    sq_norm = jnp.sum(jnp.square(kernel), axis=reduce_axes, keepdims=True)
    return kernel * jax.lax.rsqrt(sq_norm + KERNEL_NORM_EPS)


def _along_last(v: jax.Array, ndim: int) -> jax.Array:
    """[C] -> [1, ..., 1, C] with `ndim` axes (explicit, so strict rank promotion never fires)."""
    return v.reshape((1,) * (ndim - 1) + v.shape)
