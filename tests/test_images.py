"""PNG grids read back with pillow: every tile, the padding, the value ranges; .npz round trip."""

import numpy as np
import pytest
from PIL import Image

from pvpp.generation import images

H, W = 4, 3


def _tile_origin(k, nrow, padding, upscale):
    """(top, left) of tile k in the grid."""
    return padding + (k // nrow) * (H * upscale + padding), padding + (k % nrow) * (W * upscale + padding)


def _checkerboard():
    return ((np.arange(H)[:, None] + np.arange(W)[None, :]) % 2).astype(np.uint8)  # [H, W] of 0 / 1


def test_rgb_grid_holds_every_tile_and_the_padding(tmp_path):
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    solid = np.broadcast_to(colours[:, None, None, :], (4, H, W, 3))
    checker = (_checkerboard()[:, :, None] * np.array([200, 100, 50], np.uint8))[None]
    batch = np.concatenate([solid, checker])  # 5 images -> 2 rows of 3, one empty cell
    nrow, padding, upscale, pad = 3, 2, 2, (7, 8, 9)
    path = tmp_path / "sub" / "grid.png"
    returned = images.save_grid(path, batch, nrow, padding=padding, upscale=upscale, pad_value=pad)

    with Image.open(path) as png:
        assert png.mode == "RGB"
        grid = np.asarray(png)
    np.testing.assert_array_equal(grid, returned)
    assert grid.shape == (2 * (H * upscale + padding) + padding, 3 * (W * upscale + padding) + padding, 3)

    covered = np.zeros(grid.shape[:2], bool)
    for k, image in enumerate(batch):
        top, left = _tile_origin(k, nrow, padding, upscale)
        tile = grid[top : top + H * upscale, left : left + W * upscale]
        expected = np.repeat(np.repeat(image, upscale, 0), upscale, 1)
        np.testing.assert_array_equal(tile, expected, err_msg=f"tile {k}")
        covered[top : top + H * upscale, left : left + W * upscale] = True
    # Everything that is not a tile (gaps, border, the empty sixth cell) is padding.
    assert np.all(grid[~covered] == np.array(pad, np.uint8))
    assert np.count_nonzero(~covered) > 0


@pytest.mark.parametrize(
    "encode, value_range",
    [
        (lambda b: b.astype(np.float32), None),  # {0, 1}
        (lambda b: 2.0 * b.astype(np.float32) - 1.0, None),  # model space {-1, +1}
        (lambda b: (255 * b).astype(np.uint8), None),  # uint8
        (lambda b: 2.0 * b.astype(np.float32) - 1.0, (-1.0, 1.0)),
    ],
    ids=["unit_floats", "model_space", "uint8", "explicit_range"],
)
def test_binary_images_are_white_on_black_in_every_accepted_encoding(tmp_path, encode, value_range):
    binary = np.stack([_checkerboard(), 1 - _checkerboard(), np.ones((H, W), np.uint8)])[..., None]
    path = tmp_path / "binary.png"
    images.save_grid(path, encode(binary), nrow=2, padding=1, value_range=value_range)
    with Image.open(path) as png:
        assert png.mode == "L"
        grid = np.asarray(png)
    assert grid.shape == (2 * (H + 1) + 1, 2 * (W + 1) + 1)
    for k in range(3):
        top, left = 1 + (k // 2) * (H + 1), 1 + (k % 2) * (W + 1)
        np.testing.assert_array_equal(grid[top : top + H, left : left + W], 255 * binary[k, ..., 0])
    assert grid[0, 0] == images.DEFAULT_PAD_VALUE


def test_explicit_value_range_overrides_the_inferred_one():
    ones = np.ones((1, H, W, 1), np.float32)  # +1 everywhere: white in model space and in [0, 1]
    np.testing.assert_array_equal(images.make_grid(ones, 1, 0, value_range=(-1, 1)), 255)
    zeros = np.zeros((1, H, W, 1), np.float32)  # mid-grey in model space, black in [0, 1]
    np.testing.assert_array_equal(images.make_grid(zeros, 1, 0, value_range=(-1, 1)), 128)
    np.testing.assert_array_equal(images.make_grid(zeros, 1, 0), 0)


def test_bad_images_are_rejected():
    with pytest.raises(ValueError, match="C in"):
        images.make_grid(np.zeros((2, H, W, 2), np.uint8), 2)
    with pytest.raises(ValueError, match="outside value_range"):
        images.make_grid(np.full((1, H, W, 3), 1.5, np.float32), 1)
    with pytest.raises(ValueError, match="nrow must be"):
        images.make_grid(np.zeros((1, H, W, 1), np.uint8), 0)
    with pytest.raises(ValueError, match="pad_value"):
        images.make_grid(np.zeros((1, H, W, 1), np.uint8), 1, pad_value=300)


def test_save_arrays_round_trip(tmp_path):
    arrays = {"samples": np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1), "order": np.array([2, 0, 1])}
    path = images.save_arrays(tmp_path / "out" / "samples", **arrays)
    assert path.endswith("samples.npz")
    with np.load(path) as loaded:
        assert set(loaded.files) == set(arrays)
        for name, value in arrays.items():
            np.testing.assert_array_equal(loaded[name], value)
            assert loaded[name].dtype == value.dtype
