"""Convolutions evaluated piece by piece on a cached input map: one output row, or one output position.

For incremental generation (`pvpp.generation.cached_sampler`): a causal convolution keeps its whole input as a
zero-padded map that fills in as pixels are generated, and computes its output only where asked. `CachedConv`
describes where the input sits in that map (the layer's own padding; a transposed convolution stores its input
dilated, with zeros between entries, and is then an ordinary stride-1 convolution with the flipped kernel) and
how the convolution reads it: output (a, b) of a stride-s convolution is the VALID convolution of stored rows
[s a, s a + kh) and columns [s b, s b + kw). `Row(r)` and `At(r, c)` name where a value is read or written.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Row(NamedTuple):
    """Row r of a map (a traced int)."""

    r: jax.Array

    def above(self) -> "Row":
        return Row(self.r - 1)

    def take(self, m: jax.Array) -> jax.Array:
        """[B, H, W, C] -> row r [B, W, C]."""
        return jax.lax.dynamic_index_in_dim(m, self.r, axis=1, keepdims=False)

    def put(self, m: jax.Array, value: jax.Array) -> jax.Array:
        """Writes row r of m [B, H, W, C]: value [B, W, C]."""
        return jax.lax.dynamic_update_slice(m, value[:, None].astype(m.dtype), (0, self.r, 0, 0))


class At(NamedTuple):
    """Position (r, c) of a map (traced ints)."""

    r: jax.Array
    c: jax.Array

    def above(self) -> "At":
        return At(self.r - 1, self.c)

    def left(self) -> "At":
        return At(self.r, self.c - 1)

    def take(self, m: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, C] at (r, c)."""
        return jax.lax.dynamic_slice(m, (0, self.r, self.c, 0), (m.shape[0], 1, 1, m.shape[3]))[:, 0, 0]

    def put(self, m: jax.Array, value: jax.Array) -> jax.Array:
        """Writes m [B, H, W, C] at (r, c): value [B, C]."""
        return jax.lax.dynamic_update_slice(m, value[:, None, None].astype(m.dtype), (0, self.r, self.c, 0))


@dataclasses.dataclass(frozen=True)
class CachedConv:
    """A convolution's input map as cached: input (i, j) sits at stored (top + d i, left + d j) of a zero map of
    `stored` size; output (a, b) is the VALID convolution of stored rows [s a, s a + kh), columns [s b, s b + kw)."""

    in_size: tuple[int, int]
    kernel: tuple[int, int]
    stride: int
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: int = 1

    @property
    def stored(self) -> tuple[int, int]:
        (top, bottom), (left, right) = self.padding
        h, w = self.in_size
        return (self.dilation * (h - 1) + 1 + top + bottom, self.dilation * (w - 1) + 1 + left + right)

    @property
    def out_size(self) -> tuple[int, int]:
        (sh, sw), (kh, kw) = self.stored, self.kernel
        return ((sh - kh) // self.stride + 1, (sw - kw) // self.stride + 1)

    def empty(self, batch: int, channels: int) -> jax.Array:
        """The zero map [B, *stored, channels] (float32): nothing written yet, and the padding."""
        return jnp.zeros((batch, *self.stored, channels), jnp.float32)

    def write(self, m: jax.Array, where, value: jax.Array) -> jax.Array:
        """Writes input values at `where` (a row [B, W_in, C] or a position [B, C])."""
        (top, _), (left, _) = self.padding
        d = self.dilation
        if isinstance(where, Row):
            if d > 1:  # the dilated row: the values every d-th column, zeros between
                width = d * (value.shape[1] - 1) + 1
                value = jnp.zeros((value.shape[0], width, value.shape[2]), value.dtype).at[:, ::d].set(value)
            return jax.lax.dynamic_update_slice(m, value[:, None], (0, top + d * where.r, left, 0))
        return jax.lax.dynamic_update_slice(
            m, value[:, None, None], (0, top + d * where.r, left + d * where.c, 0)
        )

    def apply(self, m: jax.Array, kernel: jax.Array, bias: jax.Array, where) -> jax.Array:
        """Output at `where`: a row [B, W_out, C_out] or a position [B, C_out]."""
        (kh, kw), s = self.kernel, self.stride
        batch, _, stored_w, channels = m.shape
        if isinstance(where, Row):
            slab = jax.lax.dynamic_slice(m, (0, s * where.r, 0, 0), (batch, kh, stored_w, channels))
            out = jax.lax.conv_general_dilated(
                slab, kernel, (1, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )[:, 0]
        else:
            window = jax.lax.dynamic_slice(m, (0, s * where.r, s * where.c, 0), (batch, kh, kw, channels))
            out = window.reshape(batch, -1) @ kernel.reshape(-1, kernel.shape[-1])
        return out + bias.reshape((1,) * (out.ndim - 1) + bias.shape)
