"""Shifts and causally shifted (transposed) convolutions of PixelCNN++, NHWC.

Raster order: pixel (i, j) may depend on rows < i, and on row i at columns < j. The "down" stream u sees rows
above only; the "down-right" stream ul sees rows above and the pixels to the left.

- `DownShiftedConv` [kh, kw] (default [2, 3]): pad top kh-1, left and right (kw-1)//2, then VALID. Output (i, j)
  sees input rows i-kh+1..i, columns j-(kw-1)//2..j+(kw-1)//2.
- `DownRightShiftedConv` [kh, kw] (default [2, 2]): pad top kh-1, left kw-1, then VALID. Output (i, j) sees rows
  i-kh+1..i and columns j-kw+1..j.
- The transposed variants scatter input (i, j) to output rows s*i..s*i+kh-1 and crop so that output row r
  depends on input row r//s only (for kh = s); columns are centred (down) or left-aligned (down-right).

Stride 2 halves the size (32 -> 16 -> 8, 28 -> 14 -> 7); the transposed stride-2 variants double it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from pvpp.nn.weightnorm import WNConv, WNConvTranspose


def down_shift(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H, W, C]: a zero row on top, the last row dropped."""
    return jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))


def right_shift(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H, W, C]: a zero column on the left, the last column dropped."""
    return jnp.pad(x[:, :, :-1], ((0, 0), (0, 0), (1, 0), (0, 0)))


class DownShiftedConv(nn.Module):
    """[B, H, W, C] -> [B, ceil(H/s), ceil(W/s), features]; output (i, j) sees input rows <= i (centred columns)."""

    features: int
    kernel_size: tuple[int, int] = (2, 3)
    strides: tuple[int, int] = (1, 1)
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = down_shifted_padding(self.kernel_size)
        return WNConv(self.features, self.kernel_size, self.strides, pad, self.init_scale, name="conv")(x)


class DownRightShiftedConv(nn.Module):
    """[B, H, W, C] -> [B, ceil(H/s), ceil(W/s), features]; output (i, j) sees rows <= i and columns <= j."""

    features: int
    kernel_size: tuple[int, int] = (2, 2)
    strides: tuple[int, int] = (1, 1)
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = down_right_shifted_padding(self.kernel_size)
        return WNConv(self.features, self.kernel_size, self.strides, pad, self.init_scale, name="conv")(x)


class DownShiftedConvTranspose(nn.Module):
    """[B, H, W, C] -> [B, s*H, s*W, features]; output row r depends on input row r//s (for kh = s)."""

    features: int
    kernel_size: tuple[int, int] = (2, 3)
    strides: tuple[int, int] = (2, 2)
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = down_shifted_transpose_padding(self.kernel_size, self.strides)
        return WNConvTranspose(self.features, self.kernel_size, self.strides, pad, self.init_scale, name="conv")(x)


class DownRightShiftedConvTranspose(nn.Module):
    """[B, H, W, C] -> [B, s*H, s*W, features]; output (r, c) depends on input (r//s, c//s) (for k = s)."""

    features: int
    kernel_size: tuple[int, int] = (2, 2)
    strides: tuple[int, int] = (2, 2)
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = down_right_shifted_transpose_padding(self.kernel_size, self.strides)
        return WNConvTranspose(self.features, self.kernel_size, self.strides, pad, self.init_scale, name="conv")(x)


# The paddings (lax pairs ((top, bottom), (left, right))) of the layers above: public, so that code which
# evaluates these layers window by window (`pvpp.generation.cached_sampler`) reads the same geometry.


def down_shifted_padding(kernel_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding of `DownShiftedConv`: kh - 1 rows on top, (kw - 1) // 2 columns on each side."""
    kh, kw = kernel_size
    return (kh - 1, 0), ((kw - 1) // 2, (kw - 1) // 2)


def down_right_shifted_padding(kernel_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding of `DownRightShiftedConv`: kh - 1 rows on top, kw - 1 columns on the left."""
    kh, kw = kernel_size
    return (kh - 1, 0), (kw - 1, 0)


def down_shifted_transpose_padding(
    kernel_size: tuple[int, int], strides: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding of the dilated input of `DownShiftedConvTranspose` (columns centred)."""
    return _transpose_padding(kernel_size, strides, left=(kernel_size[1] - 1) // 2)


def down_right_shifted_transpose_padding(
    kernel_size: tuple[int, int], strides: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding of the dilated input of `DownRightShiftedConvTranspose` (columns left-aligned)."""
    return _transpose_padding(kernel_size, strides, left=0)


def _transpose_padding(
    kernel_size: tuple[int, int], strides: tuple[int, int], left: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding of the dilated input that crops the full transposed output to rows [0, s*H) and columns
    [left, left + s*W): the output is [B, s*H, s*W, C] with no rows taken from below."""
    (kh, kw), (sh, sw) = kernel_size, strides
    # Full output rows have length (H-1)s + kh; keeping the first s*H removes kh - s at the bottom.
    rows = (kh - 1, sh - 1)
    cols = (kw - 1 - left, sw - 1 + left)
    return rows, cols
