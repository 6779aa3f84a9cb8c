"""Image grids as PNG files (pillow) and sample arrays as .npz files.

Accepted pixel values (`value_range` names the range; by default it is inferred):
  - uint8 0..255: drawn as they are.
  - floats in [0, 1] (e.g. binary data {0, 1}): 0 -> 0, 1 -> 255.
  - floats in [-1, 1] (model space; binary samples -1 / +1): -1 -> 0, +1 -> 255.
  Inference for floats: [-1, 1] if any value is negative, otherwise [0, 1]. A model-space batch that happens
  to hold no negative value would be misread, so pass `value_range=(-1, 1)` when drawing model-space samples.
  Floats outside the range are an error; values in between are rounded to the nearest of the 256 levels.
Binary images are therefore drawn white-on-black (1 / +1 white, 0 / -1 black), as MNIST is usually shown. The
padding between and around tiles is grey (128) by default, so it is visible against both colours.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image

from pvpp.runs.results import atomic_write_bytes
from pvpp.validation import check_int

DEFAULT_PAD_VALUE = 128


def save_grid(
    path: str | os.PathLike,
    images,
    nrow: int,
    padding: int = 2,
    upscale: int = 1,
    *,
    value_range: tuple[float, float] | None = None,
    pad_value: int | Sequence[int] = DEFAULT_PAD_VALUE,
) -> np.ndarray:
    """Writes images [N, H, W, C] (C in {1, 3}) as one PNG grid with `nrow` images per row; returns the grid.

    The grid is ceil(N / nrow) rows by nrow columns, tile (r, c) holding image r * nrow + c (empty cells are
    padding). Every tile is upscaled by an integer factor (nearest neighbour) and surrounded by `padding`
    pixels of `pad_value` (an int, or C ints), also along the outer border. Returns the uint8 grid
    [rows * (H*upscale + padding) + padding, nrow * (W*upscale + padding) + padding, C] that was written.
    Parent folders are created; the file appears complete or not at all (written to a temporary file, renamed).
    See the module docstring for the accepted values.
    """
    grid = make_grid(images, nrow, padding, upscale, value_range=value_range, pad_value=pad_value)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    mode = "L" if grid.shape[-1] == 1 else "RGB"
    buffer = io.BytesIO()
    Image.fromarray(grid[..., 0] if mode == "L" else grid, mode=mode).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return grid


def make_grid(
    images,
    nrow: int,
    padding: int = 2,
    upscale: int = 1,
    *,
    value_range: tuple[float, float] | None = None,
    pad_value: int | Sequence[int] = DEFAULT_PAD_VALUE,
) -> np.ndarray:
    """The uint8 grid [H_grid, W_grid, C] that `save_grid` writes (same arguments, no file)."""
    pixels = to_uint8_images(images, value_range)
    num, height, width, channels = pixels.shape
    for name, value, low in (("nrow", nrow, 1), ("padding", padding, 0), ("upscale", upscale, 1)):
        check_int(value, name, low)
    fill = np.broadcast_to(np.asarray(pad_value), (channels,))
    if fill.dtype.kind not in "iu" or fill.min() < 0 or fill.max() > 255:
        raise ValueError(f"pad_value must be an int (or {channels} ints) in 0..255, got {pad_value!r}")
    if upscale > 1:
        pixels = np.repeat(np.repeat(pixels, upscale, axis=1), upscale, axis=2)
    tile_h, tile_w = height * upscale, width * upscale
    rows = -(-num // nrow)
    grid_shape = (rows * (tile_h + padding) + padding, nrow * (tile_w + padding) + padding, channels)
    grid = np.empty(grid_shape, np.uint8)
    grid[...] = fill.astype(np.uint8)
    for k in range(num):
        top = padding + (k // nrow) * (tile_h + padding)
        left = padding + (k % nrow) * (tile_w + padding)
        grid[top : top + tile_h, left : left + tile_w] = pixels[k]
    return grid


def to_uint8_images(images, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """[N, H, W, C] images (uint8, [0, 1] or [-1, 1] floats; C in {1, 3}) -> uint8 [N, H, W, C] in 0..255."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or array.shape[0] == 0:
        raise ValueError(f"images must be [N, H, W, C] with N >= 1 and C in {{1, 3}}, got {array.shape}")
    if array.dtype == np.uint8 and value_range is None:
        return array
    if array.dtype == np.bool_:
        array = array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"images must be numeric (uint8 or float), got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError("images contain NaN or infinite values")
    if value_range is None:
        value_range = (-1.0, 1.0) if array.min() < 0 else (0.0, 1.0)
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range!r}")
    # Tolerance of a fraction of one grey level, for values computed in float32 (1.0000001 after quantize).
    slack = 1e-3 * (high - low) / 255
    if array.min() < low - slack or array.max() > high + slack:
        raise ValueError(
            f"image values [{array.min()}, {array.max()}] lie outside value_range ({low}, {high}); "
            "accepted: uint8 0..255, floats in [0, 1] or [-1, 1]"
        )
    return np.clip(np.round((array - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


def save_arrays(path: str | os.PathLike, **arrays) -> str:
    """Saves named arrays (anything np.asarray accepts, e.g. jax arrays) to a compressed .npz file.

    '.npz' is appended when the path lacks it; returns the path actually written. Parent folders are created;
    the file appears complete or not at all (written to a temporary file, renamed). Read back with
    `np.load(path)[name]`.
    """
    if not arrays:
        raise ValueError("save_arrays needs at least one named array")
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    atomic_write_bytes(path, buffer.getvalue())
    return path
