"""concat_elu and the gated ResNet block of PixelCNN++ (with aux input and global / spatial conditioning)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from pvpp.nn.weightnorm import WNDense

# Second-conv init scale of every gated ResNet: the residual branch starts small.
RESIDUAL_INIT_SCALE = 0.1
_COND_KERNEL_INIT = nn.initializers.normal(stddev=0.05)


@jax.custom_vjp
def concat_elu(x: jax.Array) -> jax.Array:
    """[..., C] -> [..., 2C]: elu of x and of -x, concatenated on the channel axis.

    Of x and -x one is positive (kept) and the other is not (its elu is expm1(-|x|)), so one exponential per
    input value suffices. The two halves are stacked on a new axis [..., 2, C] and reshaped, the same layout as
    the concatenation, which XLA's CPU backend fuses into one element-wise loop (a concatenate on the minor axis
    is a slow copy of its own). The gradient (a `custom_vjp`) keeps only x and recomputes the exponential: a
    single loop over dy, where autodiff of the forward kept the [..., 2C] intermediates and read them in several
    passes; the paper CIFAR-10 train step is 1.3x faster with it (`pvpp/bench/README.md`). Values and gradients
    equal those of `concat_elu_by_autodiff` bit for bit op by op, and to float32 rounding compiled (XLA may fuse
    expm1(z) + 1 differently; tested). As a `custom_vjp` it has no forward-mode derivative (`jax.jvp`), like the
    convolution forms of `pvpp.nn.conv_forms`.
    """
    return _concat_elu_values(x)


def _concat_elu_values(x: jax.Array) -> jax.Array:
    positive = x > 0
    negative_part = jnp.expm1(-jnp.abs(x))  # elu of whichever of x, -x is not positive
    halves = jnp.stack([jnp.where(positive, x, negative_part), jnp.where(positive, negative_part, -x)], axis=-2)
    return halves.reshape(*x.shape[:-1], 2 * x.shape[-1])


def _concat_elu_forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _concat_elu_values(x), x


def _concat_elu_backward(x: jax.Array, dy: jax.Array) -> tuple[jax.Array]:
    """dy [..., 2C] -> dx [..., C] = dy[..., :C] elu'(x) - dy[..., C:] elu'(-x), where elu'(z) is 1 for z > 0 and
    otherwise exp(z), written expm1(z) + 1 as JAX's own derivative of expm1 writes it."""
    halves = dy.reshape(*x.shape[:-1], 2, x.shape[-1])
    dy_x, dy_minus_x = halves[..., 0, :], halves[..., 1, :]
    slope = jnp.expm1(-jnp.abs(x)) + 1  # elu' of whichever of x, -x is not positive
    return (jnp.where(x > 0, dy_x - dy_minus_x * slope, dy_x * slope - dy_minus_x),)


concat_elu.defvjp(_concat_elu_forward, _concat_elu_backward)


def concat_elu_by_autodiff(x: jax.Array) -> jax.Array:
    """The definition of `concat_elu`, elu(concatenate([x, -x], -1)), differentiated by JAX: what it equals (tested),
    and the model's form before the rewrite, which `pvpp.bench.train` times in its 'before' baseline."""
    return jax.nn.elu(jnp.concatenate([x, -x], axis=-1))


class GatedResNet(nn.Module):
    """x + c[..., :F] * sigmoid(c[..., F:]) with

        c = conv(concat_elu(x)) [+ nin(concat_elu(a))];  c = conv2(dropout(concat_elu(c)), 2F)
        c += dense(h) (broadcast over H, W) [+ dense(cond_map)]

    Shapes: x [B, H, W, F]; a [B, H, W, C_a] (aux input, e.g. a skip connection); h [B, D] (global
    conditioning, e.g. z2); cond_map [B, H, W, D_m] (spatial conditioning aligned with x, used un-shifted).
    `conv` builds the causal convolution (DownShiftedConv or DownRightShiftedConv) given (features, init_scale).
    The nonlinearity after the first conv is always applied, whether or not `a` is given.
    """

    conv: Callable[..., nn.Module]
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        a: jax.Array | None = None,
        h: jax.Array | None = None,
        cond_map: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        features = x.shape[-1]
        c = self.conv(features=features, name="conv_in")(concat_elu(x))
        if a is not None:
            c = c + WNDense(features, name="nin_aux")(concat_elu(a))
        c = concat_elu(c)
        c = nn.Dropout(self.dropout_rate, deterministic=not train)(c)
        c = self.conv(features=2 * features, init_scale=RESIDUAL_INIT_SCALE, name="conv_out")(c)
        if h is not None:
            # The conditional-PixelCNN place: after the second conv, before the gate.
            hw = nn.Dense(2 * features, use_bias=False, kernel_init=_COND_KERNEL_INIT, name="cond_global")(h)
            c = c + hw[:, None, None, :]
        if cond_map is not None:
            c = c + nn.Dense(2 * features, use_bias=False, kernel_init=_COND_KERNEL_INIT, name="cond_map")(cond_map)
        return gate(x, c)


def gate(x: jax.Array, c: jax.Array) -> jax.Array:
    """The gated residual update: x [..., F], c [..., 2F] -> x + c[..., :F] * sigmoid(c[..., F:])."""
    features = x.shape[-1]
    return x + c[..., :features] * jax.nn.sigmoid(c[..., features:])
