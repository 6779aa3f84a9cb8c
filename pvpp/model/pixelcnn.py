"""PixelCNN++ (Salimans et al. 2017) in Flax Linen, split into a down path and an up path.

The down path returns the two skip lists (u_list, ul_list), (nr_resnet + 1) * 3 entries each; the up path pops
them in mirror order. Between the two, a caller (the PixelVAE++ z3 encoder) may read the down-path features and
hand back one optional extra tensor per skip (`skip_extras`), which is concatenated to that skip where the mirror
block of the up path consumes it. Optional conditioning:

- `cond_map` [B, H, W, D]: a spatial map aligned with the image (f(z1)). It is used un-shifted: ordinary
  (non-causal) 3x3 convolutions bring it to each resolution and every gated ResNet adds a 1x1 projection of it,
  so pixel (i, j) sees the map at (i, j) and at every other position.
- `h` [B, D]: a global vector (z2) added in every gated ResNet.

Given these, output (i, j) depends on the image only at pixels before (i, j) in raster order.
`downsample=False` keeps one resolution: the two stride-2 stages become stride-1 shifted convolutions, so the
skip lists have the same length and structure.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

# concat_elu is looked up on the module when traced, so pvpp.bench.train's 'before' baseline swaps every use.
from pvpp.nn import resnet
from pvpp.nn.resnet import GatedResNet
from pvpp.nn.shifted import (
    DownRightShiftedConv,
    DownRightShiftedConvTranspose,
    DownShiftedConv,
    DownShiftedConvTranspose,
    down_shift,
    right_shift,
)
from pvpp.nn.weightnorm import WNConv, WNDense
from pvpp.validation import check_int

NUM_STAGES = 3


class DownPath(NamedTuple):
    """What the down path hands to the up path.

    u_list, ul_list: (nr_resnet + 1) * 3 tensors each, [B, H_r, W_r, F] at resolution r of their stage.
    cond_features: one [B, H_r, W_r, F] map per stage (highest resolution first), or None without `cond_map`.
    """

    u_list: tuple[jax.Array, ...]
    ul_list: tuple[jax.Array, ...]
    cond_features: tuple[jax.Array, ...] | None


class PixelCNNPP(nn.Module):
    """PixelCNN++ decoder: x [B, H, W, C] in [-1, 1] -> [B, H, W, out_channels] (Bernoulli logits or mixture params).

    nr_resnet: gated ResNets per stage; nr_filters: channels F; dropout_rate: inside every gated ResNet (train only);
    downsample: stride-2 stages (H -> H/2 -> H/4) or a single resolution.
    """

    nr_resnet: int = 5
    nr_filters: int = 160
    out_channels: int = 100
    dropout_rate: float = 0.5
    downsample: bool = True

    @property
    def num_skips(self) -> int:
        """Length of each skip list: (nr_resnet + 1) * 3."""
        return (self.nr_resnet + 1) * NUM_STAGES

    def setup(self):
        check_int(self.nr_resnet, "nr_resnet", 1)
        check_int(self.nr_filters, "nr_filters", 1)
        check_int(self.out_channels, "out_channels", 1)
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        f = self.nr_filters
        stride = (2, 2) if self.downsample else (1, 1)
        gres_u = functools.partial(GatedResNet, conv=DownShiftedConv, dropout_rate=self.dropout_rate)
        gres_ul = functools.partial(GatedResNet, conv=DownRightShiftedConv, dropout_rate=self.dropout_rate)

        self.first_u = DownShiftedConv(f, (2, 3))
        self.first_ul_above = DownShiftedConv(f, (1, 3))
        self.first_ul_left = DownRightShiftedConv(f, (2, 1))
        self.down_u = [gres_u() for _ in range(NUM_STAGES * self.nr_resnet)]
        self.down_ul = [gres_ul() for _ in range(NUM_STAGES * self.nr_resnet)]
        self.down_u_resample = [DownShiftedConv(f, (2, 3), stride) for _ in range(NUM_STAGES - 1)]
        self.down_ul_resample = [DownRightShiftedConv(f, (2, 2), stride) for _ in range(NUM_STAGES - 1)]
        num_up = self.nr_resnet + 2 * (self.nr_resnet + 1)
        self.up_u = [gres_u() for _ in range(num_up)]
        self.up_ul = [gres_ul() for _ in range(num_up)]
        self.up_u_resample = [DownShiftedConvTranspose(f, (2, 3), stride) for _ in range(NUM_STAGES - 1)]
        self.up_ul_resample = [DownRightShiftedConvTranspose(f, (2, 2), stride) for _ in range(NUM_STAGES - 1)]
        # Latent extras for the deepest skip, which seeds the up path instead of entering a gated ResNet.
        self.seed_extra_u = WNDense(f)
        self.seed_extra_ul = WNDense(f)
        # Un-shifted conditioning-map features, one per stage.
        self.cond_convs = [
            WNConv(f, (3, 3), (1, 1) if stage == 0 else stride, "SAME") for stage in range(NUM_STAGES)
        ]
        self.head = WNDense(self.out_channels)

    def __call__(
        self,
        x: jax.Array,
        *,
        cond_map: jax.Array | None = None,
        h: jax.Array | None = None,
        skip_extras: Sequence[jax.Array | None] | None = None,
        train: bool = False,
    ) -> jax.Array:
        """x [B, H, W, C] in [-1, 1] -> [B, H, W, out_channels]."""
        return self.up(self.down(x, cond_map=cond_map, h=h, train=train), h=h, skip_extras=skip_extras, train=train)

    def down(
        self,
        x: jax.Array,
        *,
        cond_map: jax.Array | None = None,
        h: jax.Array | None = None,
        train: bool = False,
    ) -> DownPath:
        """The first pass, resolution decreasing. x [B, H, W, C] in [-1, 1]; returns the skip lists."""
        if x.ndim != 4:
            raise ValueError(f"x must be [B, H, W, C], got shape {x.shape}")
        if cond_map is not None and cond_map.shape[:3] != x.shape[:3]:
            raise ValueError(f"cond_map must be [B, H, W, D] aligned with x {x.shape}, got {cond_map.shape}")
        if h is not None and (h.ndim != 2 or h.shape[0] != x.shape[0]):
            raise ValueError(f"h must be [B, D] with B = {x.shape[0]}, got {h.shape}")
        cond_features = self.cond_features(cond_map)

        # A channel of ones, so that zero padding differs from mid-grey pixels.
        x = jnp.concatenate([x, jnp.ones(x.shape[:3] + (1,), x.dtype)], axis=-1)
        u = down_shift(self.first_u(x))
        ul = down_shift(self.first_ul_above(x)) + right_shift(self.first_ul_left(x))
        u_list, ul_list = [u], [ul]
        for stage in range(NUM_STAGES):
            if stage > 0:
                u_list.append(self.down_u_resample[stage - 1](u_list[-1]))
                ul_list.append(self.down_ul_resample[stage - 1](ul_list[-1]))
            cond = None if cond_features is None else cond_features[stage]
            for block in range(self.nr_resnet):
                i = stage * self.nr_resnet + block
                u_list.append(self.down_u[i](u_list[-1], h=h, cond_map=cond, train=train))
                ul_list.append(self.down_ul[i](ul_list[-1], a=u_list[-1], h=h, cond_map=cond, train=train))
        return DownPath(tuple(u_list), tuple(ul_list), cond_features)

    def up(
        self,
        down: DownPath,
        *,
        cond_map: jax.Array | None = None,
        h: jax.Array | None = None,
        skip_extras: Sequence[jax.Array | None] | None = None,
        train: bool = False,
    ) -> jax.Array:
        """The second pass, resolution increasing; consumes every skip. Returns [B, H, W, out_channels].

        cond_map: conditioning for the up path only, when the down path ran without one (PixelVAE++ keeps its
        down path a function of x alone, since that path is the z3 encoder).
        skip_extras: None, or one entry per skip (aligned with `down.u_list`), each None or [B, H_k, W_k, D_k],
        concatenated to skip k (both streams) where the mirror block consumes it.
        """
        cond_features = down.cond_features
        if cond_map is not None:
            if cond_features is not None:
                raise ValueError("cond_map was given to both the down path and the up path; give it once")
            if cond_map.shape[:3] != down.u_list[0].shape[:3]:
                raise ValueError(
                    f"cond_map must be [B, H, W, D] aligned with the image {down.u_list[0].shape[:3]}, got {cond_map.shape}"
                )
            cond_features = self.cond_features(cond_map)
        u_list, ul_list = list(down.u_list), list(down.ul_list)
        if len(u_list) != self.num_skips or len(ul_list) != self.num_skips:
            raise ValueError(
                f"the up path of nr_resnet={self.nr_resnet} needs {self.num_skips} skips per stream, got "
                f"{len(u_list)} and {len(ul_list)}: down path and up path come from different configurations"
            )
        extras = [None] * self.num_skips if skip_extras is None else list(skip_extras)
        if len(extras) != self.num_skips:
            raise ValueError(f"skip_extras must have {self.num_skips} entries (one per skip), got {len(extras)}")
        for k, (skip, extra) in enumerate(zip(u_list, extras)):
            if extra is not None and extra.shape[:3] != skip.shape[:3]:
                raise ValueError(f"skip_extras[{k}] must be [B, H, W, D] with {skip.shape[:3]}, got {extra.shape}")

        def pop():
            k = len(u_list) - 1
            u_skip, ul_skip, extra = u_list.pop(), ul_list.pop(), extras[k]
            if extra is not None:
                u_skip = jnp.concatenate([u_skip, extra], axis=-1)
                ul_skip = jnp.concatenate([ul_skip, extra], axis=-1)
            return u_skip, ul_skip

        # The deepest skip seeds the up path.
        u, ul, seed_extra = u_list.pop(), ul_list.pop(), extras[-1]
        if seed_extra is not None:
            u = u + self.seed_extra_u(resnet.concat_elu(seed_extra))
            ul = ul + self.seed_extra_ul(resnet.concat_elu(seed_extra))
        i = 0
        for stage in range(NUM_STAGES):
            if stage > 0:
                u = self.up_u_resample[stage - 1](u)
                ul = self.up_ul_resample[stage - 1](ul)
            cond = None if cond_features is None else cond_features[NUM_STAGES - 1 - stage]
            for _ in range(self.nr_resnet if stage == 0 else self.nr_resnet + 1):
                u_skip, ul_skip = pop()
                u = self.up_u[i](u, a=u_skip, h=h, cond_map=cond, train=train)
                ul = self.up_ul[i](ul, a=jnp.concatenate([u, ul_skip], axis=-1), h=h, cond_map=cond, train=train)
                i += 1
        # Internal invariant: every skip has been consumed exactly once.
        assert not u_list and not ul_list, (len(u_list), len(ul_list))
        return self.head(jax.nn.elu(ul))

    def cond_features(self, cond_map: jax.Array | None) -> tuple[jax.Array, ...] | None:
        """cond_map [B, H, W, D] -> one [B, H_r, W_r, F] map per stage (highest resolution first), or None."""
        if cond_map is None:
            return None
        features, m = [], cond_map
        for stage in range(NUM_STAGES):
            m = self.cond_convs[stage](m if stage == 0 else jax.nn.elu(m))
            features.append(m)
        return tuple(features)
