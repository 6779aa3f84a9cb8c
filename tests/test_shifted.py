"""Receptive fields of the shifts and shifted (transposed) convolutions, checked with gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pvpp.nn import shifted


def _dependence(module, x, out_pos):
    """Boolean [H_in, W_in]: which input pixels the output at out_pos depends on (random weights)."""
    variables = module.init(jax.random.key(0), x)
    variables = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(1), p.shape), variables)

    def f(x):
        return jnp.sum(module.apply(variables, x)[0, out_pos[0], out_pos[1]])

    return np.abs(np.asarray(jax.grad(f)(x))[0].sum(-1)) > 0


def test_down_shift_and_right_shift_move_by_one():
    x = jnp.arange(2 * 3 * 4 * 1, dtype=jnp.float32).reshape(2, 3, 4, 1) + 1
    down = shifted.down_shift(x)
    right = shifted.right_shift(x)
    np.testing.assert_array_equal(down[:, 0], 0)
    np.testing.assert_array_equal(down[:, 1:], x[:, :-1])
    np.testing.assert_array_equal(right[:, :, 0], 0)
    np.testing.assert_array_equal(right[:, :, 1:], x[:, :, :-1])


@pytest.mark.parametrize("size", [7, 8])
def test_down_shifted_conv_sees_rows_above_and_same_row_centred(size):
    x = jax.random.normal(jax.random.key(2), (1, size, size, 2))
    i, j = 4, 3
    dep = _dependence(shifted.DownShiftedConv(3, (2, 3)), x, (i, j))
    expected = np.zeros_like(dep)
    expected[i - 1 : i + 1, j - 1 : j + 2] = True
    np.testing.assert_array_equal(dep, expected)


def test_down_right_shifted_conv_sees_up_and_left():
    x = jax.random.normal(jax.random.key(3), (1, 8, 8, 2))
    i, j = 4, 3
    dep = _dependence(shifted.DownRightShiftedConv(3, (2, 2)), x, (i, j))
    expected = np.zeros_like(dep)
    expected[i - 1 : i + 1, j - 1 : j + 1] = True
    np.testing.assert_array_equal(dep, expected)


@pytest.mark.parametrize("size,out", [(28, 14), (14, 7), (32, 16), (16, 8)])
def test_stride_two_halves_the_size(size, out):
    x = jnp.zeros((1, size, size, 1))
    for module in (shifted.DownShiftedConv(2, strides=(2, 2)), shifted.DownRightShiftedConv(2, strides=(2, 2))):
        y = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x)[0], x)
        assert y.shape == (1, out, out, 2)


@pytest.mark.parametrize(
    "module_cls,kernel,centred",
    [(shifted.DownShiftedConvTranspose, (2, 3), True), (shifted.DownRightShiftedConvTranspose, (2, 2), False)],
)
@pytest.mark.parametrize("stride", [1, 2])
def test_transposed_output_row_depends_on_input_row_r_over_s_only(module_cls, kernel, centred, stride):
    x = jax.random.normal(jax.random.key(4), (1, 7, 7, 2))
    module = module_cls(3, kernel, (stride, stride))
    y = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x)[0], x)
    assert y.shape == (1, 7 * stride, 7 * stride, 3)
    for r, c in [(0, 0), (5, 6), (7 * stride - 1, 3)]:
        dep = _dependence(module, x, (r, c))
        rows = np.nonzero(dep.any(axis=1))[0]
        if stride == 2:
            # Output row r depends on input row r // 2 only: never on a later row.
            np.testing.assert_array_equal(rows, [r // 2])
        else:
            assert rows.max() == r and rows.min() >= r - 1
        cols = np.nonzero(dep.any(axis=0))[0]
        if not centred:
            assert cols.max() == c // stride
