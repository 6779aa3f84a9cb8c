"""Cached, incremental sampling of pvpp's PixelCNN++ decoder: about one decoder pass of work per image.

The naive sampler (`pvpp.generation.sample.autoregressive_sample`) runs the whole network once per pixel,
H * W passes for one image. Yet sampling pixel (r, c) needs each layer's output at one place only, and each
layer's inputs there were already computed for earlier pixels. So here every causal convolution keeps its
(activated) input as a map that fills in as sampling proceeds, and each layer is evaluated only where the next
pixel needs it. This is the idea of Ramachandran et al. 2017 ("Fast generation for convolutional
autoregressive models"); the schedule below is pvpp's own, for its decoder (`pvpp.model.pixelcnn.PixelCNNPP`,
with `cond_map`, `h` and `skip_extras`):

- **Row phase**, when image row r starts: the vertical stream u of both passes reads only rows above the pixel,
  so each u layer computes its whole row at once. A stage at resolution 1/f (f = 1, 2, 4 with down-sampling)
  computes its row r / f when f divides r (`lax.cond`), and does nothing on the other rows.
- **Pixel phase**, at (r, c): the down-right stream ul of every layer at (r, c) (a stage at 1/f: at
  (r / f, c / f) when f divides both), then the head's outputs at (r, c), the pixel's value (sampled, or given),
  written into the input maps of the first layers.

Why that order is causal: ul at (r, c) reads the layer below at rows r - 1..r, columns c - 1..c (all written
earlier or just now), and u at row r (written in this row's row phase). A stride-2 layer's output (a, b) reads
its input at rows 2a - 1..2a and columns 2b - 1..2b: complete once pixel (2a, 2b) is done, which is when it
runs. A stride-2 transposed layer's output (r, c) reads its input at (r // 2, c // 2) only, computed at pixel
(2 (r // 2), 2 (c // 2)) <= (r, c). The first layers are shifted: u's first row and ul's first column are zero.

Every convolution reads a window of a zero-padded input map: output row r of a stride-s convolution reads stored
rows [s r, s r + kh). A transposed convolution stores its input dilated (zeros between entries), where it is an
ordinary stride-1 convolution with the flipped kernel (`pvpp.nn.weightnorm.conv_transpose`). The paddings are
the layers' own (`pvpp.nn.shifted`), and the weights are read from the decoder's parameter tree as they are
(`effective_kernel`: g * V / ||V||, no converted copy), so any trained model or export samples with this.

Cost: the row phases add up to one pass of the u stream; the pixel phases to one pass of the ul stream, in
H * W small steps (matrix products of [B, 4 * 2F] x [4 * 2F, 2F]). Memory: one map per convolution input,
[B, H_r + 1, W_r + 2, 2F] floats at resolution r (float32).

    x = cached_sample(spec, decoder_params, pixel_keys, shape, likelihood, conditioning)

samples x [B, H, W, C] with the naive sampler's key stream (pixel p = i * W + j uses pixel_keys[p] and
`pvpp.model.likelihoods.sample_pixel_values`), so with outputs equal up to float rounding both draw the same images.
`cached_outputs(spec, decoder_params, x, conditioning)` runs the same program on a given image (each pixel's
value written in instead of sampled) and returns every pixel's outputs: the check against the full pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from pvpp.model import likelihoods
from pvpp.model.pixelcnn import NUM_STAGES, PixelCNNPP
from pvpp.nn.cached_conv import At, CachedConv, Row
from pvpp.nn.resnet import concat_elu, gate
from pvpp.nn.shifted import (
    down_right_shifted_padding,
    down_right_shifted_transpose_padding,
    down_shifted_padding,
    down_shifted_transpose_padding,
)
from pvpp.nn.weightnorm import effective_kernel

U_KERNEL = (2, 3)  # the vertical stream's DownShiftedConv, as in PixelCNNPP
UL_KERNEL = (2, 2)  # the down-right stream's DownRightShiftedConv


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """The static shape of a `PixelCNNPP` (what the compiled sampler specialises on)."""

    nr_resnet: int
    nr_filters: int
    out_channels: int
    downsample: bool

    @classmethod
    def of(cls, decoder: PixelCNNPP) -> "DecoderSpec":
        return cls(decoder.nr_resnet, decoder.nr_filters, decoder.out_channels, decoder.downsample)


class Conditioning(NamedTuple):
    """The decoder's conditioning, computed once per image before the pixel loop.

    down_features / up_features: None, or one [B, H_s, W_s, F] map per stage (highest resolution first), the
    `PixelCNNPP.cond_features` of a `cond_map`, for the first (down) and second (up) pass. down_h / up_h: None or
    [B, D], the global vector of each pass. skip_extras: None, or one entry per skip (None or [B, H_k, W_k, D_k]).
    `PixelCNNPP.__call__(x, cond_map=m, h=h)` conditions both passes; PixelVAE++ only the up pass.
    """

    down_features: tuple[jax.Array, ...] | None = None
    down_h: jax.Array | None = None
    up_features: tuple[jax.Array, ...] | None = None
    up_h: jax.Array | None = None
    skip_extras: tuple[jax.Array | None, ...] | None = None


def cached_sample(
    spec: DecoderSpec,
    params: Any,
    pixel_keys: jax.Array,
    shape: tuple[int, int, int, int],
    likelihood: str,
    conditioning: Conditioning = Conditioning(),
) -> jax.Array:
    """Samples x [B, H, W, C] (float32, model space [-1, 1]) in raster order with the cached network.

    params: the decoder's 'params' collection (a `PixelCNNPP`'s, e.g. `variables['params']['decoder']` of a
    PixelVAEPP). pixel_keys: [H * W] keys, pixel p = i * W + j sampled with pixel_keys[p] exactly as
    `pvpp.generation.sample.autoregressive_sample_with_keys` does. shape, likelihood: as for that sampler (static).
    Jit it (or call it under jit): the whole image is one `lax.fori_loop` over rows with one over columns.
    """
    channels = shape[3]

    def choose(p, outputs_BK):
        return likelihoods.sample_pixel_values(pixel_keys[p], outputs_BK, likelihood, channels)

    x, _ = _run(spec, params, shape, conditioning, choose, record_outputs=False)
    return x


def cached_outputs(
    spec: DecoderSpec, params: Any, x: jax.Array, conditioning: Conditioning = Conditioning()
) -> jax.Array:
    """The cached network's outputs [B, H, W, out_channels] on a given image x [B, H, W, C] (model space): each
    pixel's outputs are computed before its value is written in, as when sampling. Equal to the full pass
    `PixelCNNPP.apply` (or PixelVAE++'s decode) up to float rounding."""
    width = x.shape[2]

    def choose(p, outputs_BK):
        return x[:, p // width, p % width]

    _, outputs = _run(spec, params, x.shape, conditioning, choose, record_outputs=True)
    return outputs


def _run(spec, params, shape, conditioning, choose: Callable, record_outputs: bool):
    batch, height, width, channels = shape
    net = _Network(spec, params, conditioning, (height, width, channels), batch)
    x = jnp.zeros(shape, jnp.float32)
    outputs = jnp.zeros((batch, height, width, spec.out_channels), jnp.float32) if record_outputs else None

    def row(r, carry):
        cache, x, outputs = carry
        cache = net.row_phase(cache, r)

        def pixel(c, carry):
            cache, x, outputs = carry
            cache, out_BK = net.pixel_phase(cache, r, c)
            value = choose(r * width + c, out_BK).astype(jnp.float32)  # [B, C]
            cache = net.write_pixel(cache, r, c, value)
            x = jax.lax.dynamic_update_slice(x, value[:, None, None, :], (0, r, c, 0))
            if outputs is not None:
                outputs = jax.lax.dynamic_update_slice(outputs, out_BK[:, None, None, :], (0, r, c, 0))
            return cache, x, outputs

        return jax.lax.fori_loop(0, width, pixel, (cache, x, outputs))

    _, x, outputs = jax.lax.fori_loop(0, height, row, (net.empty_cache(), x, outputs))
    return x, outputs


# ----------------------------------------------------------------------------------------------------------
# The network, layer by layer, in the order of PixelCNNPP.down / PixelCNNPP.up


class _Network:
    """The decoder's layers as cached-map operations. Built under jit: holds the effective weights (computed
    once, outside the loops), the geometry of every cached map, and the conditioning."""

    def __init__(self, spec: DecoderSpec, params: Any, conditioning: Conditioning, image_shape, batch: int):
        self.nr = spec.nr_resnet
        self.filters = spec.nr_filters
        self.batch = batch
        self.params = params
        self.cond = conditioning
        self.num_skips = (self.nr + 1) * NUM_STAGES
        height, width, channels = image_shape
        stride = 2 if spec.downsample else 1
        self.factors = tuple(
            stride**s for s in range(NUM_STAGES)
        )  # stage s runs at resolution 1 / factors[s]
        if conditioning.skip_extras is not None and len(conditioning.skip_extras) != self.num_skips:
            raise ValueError(
                f"skip_extras must have {self.num_skips} entries, got {len(conditioning.skip_extras)}"
            )

        geometry: dict[str, CachedConv] = {}
        image = (height, width)
        geometry["first_u"] = CachedConv(image, U_KERNEL, 1, down_shifted_padding(U_KERNEL))
        geometry["first_ul_above"] = CachedConv(image, (1, 3), 1, down_shifted_padding((1, 3)))
        geometry["first_ul_left"] = CachedConv(image, (2, 1), 1, down_right_shifted_padding((2, 1)))
        sizes = [image]
        for s in range(NUM_STAGES - 1):
            geometry[f"down_u_resample_{s}"] = CachedConv(
                sizes[s], U_KERNEL, stride, down_shifted_padding(U_KERNEL)
            )
            geometry[f"down_ul_resample_{s}"] = CachedConv(
                sizes[s], UL_KERNEL, stride, down_right_shifted_padding(UL_KERNEL)
            )
            sizes.append(geometry[f"down_u_resample_{s}"].out_size)
        self.sizes = tuple(sizes)
        for t in range(NUM_STAGES - 1):  # up-path stage t + 1 grows stage (level) 2 - t to 1 - t
            level_in, strides = NUM_STAGES - 1 - t, (stride, stride)
            geometry[f"up_u_resample_{t}"] = CachedConv(
                sizes[level_in], U_KERNEL, 1, down_shifted_transpose_padding(U_KERNEL, strides), stride
            )
            geometry[f"up_ul_resample_{t}"] = CachedConv(
                sizes[level_in],
                UL_KERNEL,
                1,
                down_right_shifted_transpose_padding(UL_KERNEL, strides),
                stride,
            )
            for stream in ("u", "ul"):
                grown = geometry[f"up_{stream}_resample_{t}"].out_size
                if grown != sizes[level_in - 1]:
                    raise ValueError(
                        f"image size {image} does not halve and double back evenly ({sizes[level_in]} grows to "
                        f"{grown}, not {sizes[level_in - 1]}): the decoder itself cannot run on it"
                    )
        for name, level in self._blocks():
            kernel, pad = (
                (U_KERNEL, down_shifted_padding) if "_u_" in name else (UL_KERNEL, down_right_shifted_padding)
            )
            for conv in ("conv_in", "conv_out"):
                geometry[f"{name}/{conv}"] = CachedConv(sizes[level], kernel, 1, pad(kernel))
        self.geometry = geometry
        self.in_channels = {name: self._in_channels(name, channels) for name in geometry}

        # Effective weights: transposed convolutions become stride-1 convolutions with the flipped kernel.
        self.weights = {}
        for name in geometry:
            kernel, bias = effective_kernel(_conv_params(params, name))
            if name.startswith("up_") and "_resample_" in name:
                kernel = kernel[::-1, ::-1]
            self.weights[name] = (kernel, bias)

    # -- the schedule -------------------------------------------------------------------------------------

    def empty_cache(self) -> dict[str, jax.Array]:
        """Every cached map, zero: convolution inputs (padded), the skips and the up pass's u outputs."""
        cache = {name: geo.empty(self.batch, self.in_channels[name]) for name, geo in self.geometry.items()}
        for k, level in enumerate(self._skip_levels()):
            for stream in ("u", "ul"):
                cache[f"skip_{stream}_{k}"] = jnp.zeros(
                    (self.batch, *self.sizes[level], self.filters), jnp.float32
                )
        for i, (_, level) in enumerate(self._up_blocks("u")):
            cache[f"up_u_out_{i}"] = jnp.zeros((self.batch, *self.sizes[level], self.filters), jnp.float32)
        return cache

    def row_phase(self, cache: dict, r: jax.Array) -> dict:
        """The u stream of every stage whose row starts at image row r (both passes)."""
        for s in range(NUM_STAGES):
            cache = self._when(
                r, None, s, cache, lambda c, s=s: self._first_pass_u(c, s, Row(r // self.factors[s]))
            )
        for t in range(NUM_STAGES):
            level = NUM_STAGES - 1 - t
            cache = self._when(
                r,
                None,
                level,
                cache,
                lambda c, t=t, level=level: self._second_pass_u(c, t, Row(r // self.factors[level])),
            )
        return cache

    def pixel_phase(self, cache: dict, r: jax.Array, c: jax.Array) -> tuple[dict, jax.Array]:
        """The ul stream at pixel (r, c) of every stage it reaches; returns (cache, head outputs [B, K])."""
        for s in range(NUM_STAGES):
            f = self.factors[s]
            cache = self._when(
                r, c, s, cache, lambda m, s=s, f=f: self._first_pass_ul(m, s, At(r // f, c // f))
            )
        for t in range(NUM_STAGES - 1):
            level = NUM_STAGES - 1 - t
            f = self.factors[level]
            cache = self._when(
                r, c, level, cache, lambda m, t=t, f=f: self._second_pass_ul(m, t, At(r // f, c // f))[0]
            )
        cache, ul = self._second_pass_ul(cache, NUM_STAGES - 1, At(r, c))  # full resolution: every pixel
        return cache, _dense(jax.nn.elu(ul), self.params["head"])

    def write_pixel(self, cache: dict, r: jax.Array, c: jax.Array, value: jax.Array) -> dict:
        """Writes pixel (r, c) = value [B, C] (with the constant channel of ones) where the first layers read it."""
        x = jnp.concatenate([value, jnp.ones((value.shape[0], 1), value.dtype)], axis=-1)
        for name in ("first_u", "first_ul_above", "first_ul_left"):
            cache = {**cache, name: self.geometry[name].write(cache[name], At(r, c), x)}
        return cache

    def _when(self, r, c, level, cache, step):
        """step(cache) if stage `level` has a row (c None) or position at pixel (r, c), else the cache as is."""
        f = self.factors[level]
        if f == 1:
            return step(cache)
        due = r % f == 0 if c is None else (r % f == 0) & (c % f == 0)
        return jax.lax.cond(due, step, lambda m: m, cache)

    # -- the two passes, one stage at a time ---------------------------------------------------------------

    def _first_pass_u(self, cache: dict, s: int, at: Row) -> dict:
        if s == 0:  # down_shift(first_u(x)): row r is the convolution's row r - 1, and zero for r = 0
            u = self._shifted(cache, "first_u", at.above(), at.r > 0)
        else:
            u = self._conv(cache, f"down_u_resample_{s - 1}", at)
        k = s * (self.nr + 1)
        cache = self._put(cache, f"skip_u_{k}", at, u)
        features = None if self.cond.down_features is None else self.cond.down_features[s]
        for b in range(self.nr):
            cache, u = self._block(
                cache, f"down_u_{s * self.nr + b}", at, u, None, self.cond.down_h, features
            )
            cache = self._put(cache, f"skip_u_{k + 1 + b}", at, u)
        if s < NUM_STAGES - 1:
            cache = self._write(cache, f"down_u_resample_{s}", at, u)
        return cache

    def _first_pass_ul(self, cache: dict, s: int, at: At) -> dict:
        if s == 0:  # down_shift(first_ul_above(x)) + right_shift(first_ul_left(x))
            ul = self._shifted(cache, "first_ul_above", at.above(), at.r > 0)
            ul = ul + self._shifted(cache, "first_ul_left", at.left(), at.c > 0)
        else:
            ul = self._conv(cache, f"down_ul_resample_{s - 1}", at)
        k = s * (self.nr + 1)
        cache = self._put(cache, f"skip_ul_{k}", at, ul)
        features = None if self.cond.down_features is None else self.cond.down_features[s]
        for b in range(self.nr):
            a = at.take(cache[f"skip_u_{k + 1 + b}"])
            cache, ul = self._block(
                cache, f"down_ul_{s * self.nr + b}", at, ul, a, self.cond.down_h, features
            )
            cache = self._put(cache, f"skip_ul_{k + 1 + b}", at, ul)
        if s < NUM_STAGES - 1:
            cache = self._write(cache, f"down_ul_resample_{s}", at, ul)
        return cache

    def _second_pass_u(self, cache: dict, t: int, at: Row) -> dict:
        level = NUM_STAGES - 1 - t
        if t == 0:  # the deepest skip seeds the pass
            u = self._seed(cache, "u", at)
        else:
            u = self._conv(cache, f"up_u_resample_{t - 1}", at)
        features = None if self.cond.up_features is None else self.cond.up_features[level]
        for i, k in self._up_stage(t):
            a = self._skip(cache, "u", k, at)
            cache, u = self._block(cache, f"up_u_{i}", at, u, a, self.cond.up_h, features)
            cache = self._put(cache, f"up_u_out_{i}", at, u)
        if t < NUM_STAGES - 1:
            cache = self._write(cache, f"up_u_resample_{t}", at, u)
        return cache

    def _second_pass_ul(self, cache: dict, t: int, at: At) -> tuple[dict, jax.Array]:
        level = NUM_STAGES - 1 - t
        if t == 0:
            ul = self._seed(cache, "ul", at)
        else:
            ul = self._conv(cache, f"up_ul_resample_{t - 1}", at)
        features = None if self.cond.up_features is None else self.cond.up_features[level]
        for i, k in self._up_stage(t):
            a = jnp.concatenate([at.take(cache[f"up_u_out_{i}"]), self._skip(cache, "ul", k, at)], axis=-1)
            cache, ul = self._block(cache, f"up_ul_{i}", at, ul, a, self.cond.up_h, features)
        if t < NUM_STAGES - 1:
            cache = self._write(cache, f"up_ul_resample_{t}", at, ul)
        return cache, ul

    def _seed(self, cache: dict, stream: str, at) -> jax.Array:
        last = self.num_skips - 1
        value = at.take(cache[f"skip_{stream}_{last}"])
        extra = self._extra(last, at)
        if extra is not None:
            value = value + _dense(concat_elu(extra), self.params[f"seed_extra_{stream}"])
        return value

    def _skip(self, cache: dict, stream: str, k: int, at) -> jax.Array:
        value = at.take(cache[f"skip_{stream}_{k}"])
        extra = self._extra(k, at)
        return value if extra is None else jnp.concatenate([value, extra], axis=-1)

    def _extra(self, k: int, at) -> jax.Array | None:
        extras = self.cond.skip_extras
        return None if extras is None or extras[k] is None else at.take(extras[k])

    # -- one gated ResNet, one convolution ------------------------------------------------------------------

    def _block(self, cache, name, at, x, a, h, features):
        """`GatedResNet` at `at` (x [B, (W,) F] there); returns (cache, output there)."""
        p = self.params[name]
        cache = self._write(cache, f"{name}/conv_in", at, concat_elu(x))
        c = self._conv(cache, f"{name}/conv_in", at)
        if a is not None:
            c = c + _dense(concat_elu(a), p["nin_aux"])
        cache = self._write(cache, f"{name}/conv_out", at, concat_elu(c))
        c = self._conv(cache, f"{name}/conv_out", at)
        if h is not None:
            hw = h @ p["cond_global"]["kernel"]
            c = c + (hw[:, None] if isinstance(at, Row) else hw)
        if features is not None:
            c = c + at.take(features) @ p["cond_map"]["kernel"]
        return cache, gate(x, c)

    def _conv(self, cache, name, at) -> jax.Array:
        kernel, bias = self.weights[name]
        return self.geometry[name].apply(cache[name], kernel, bias, at)

    def _shifted(self, cache, name, at, valid) -> jax.Array:
        """The convolution at a shifted place (one row up or one column left), zero where that falls outside."""
        return jnp.where(valid, self._conv(cache, name, at), 0.0)

    def _write(self, cache, name, at, value) -> dict:
        return {**cache, name: self.geometry[name].write(cache[name], at, value)}

    def _put(self, cache, name, at, value) -> dict:
        return {**cache, name: at.put(cache[name], value)}

    # -- static structure ----------------------------------------------------------------------------------

    def _blocks(self):
        """(parameter name, stage level) of every gated ResNet."""
        for s in range(NUM_STAGES):
            for b in range(self.nr):
                yield f"down_u_{s * self.nr + b}", s
                yield f"down_ul_{s * self.nr + b}", s
        for stream in ("u", "ul"):
            for i, level in self._up_blocks(stream):
                yield f"up_{stream}_{i}", level

    def _up_blocks(self, stream: str):
        i = 0
        for t in range(NUM_STAGES):
            for _ in self._up_stage(t):
                yield i, NUM_STAGES - 1 - t
                i += 1

    def _up_stage(self, t: int) -> list[tuple[int, int]]:
        """(block index i, popped skip k) of up-pass stage t, in the order PixelCNNPP.up runs them."""
        counts = [self.nr] + [self.nr + 1] * (NUM_STAGES - 1)
        first = sum(counts[:t])
        return [(first + j, self.num_skips - 2 - (first + j)) for j in range(counts[t])]

    def _skip_levels(self) -> list[int]:
        return [k // (self.nr + 1) for k in range(self.num_skips)]

    def _in_channels(self, name: str, image_channels: int) -> int:
        if name.startswith("first_"):
            return image_channels + 1
        if name.endswith("/conv_in") or name.endswith("/conv_out"):
            return 2 * self.filters
        return self.filters  # the resampling convolutions read a stream's output


def _dense(x: jax.Array, params: Any) -> jax.Array:
    """A weight-normalised dense layer (`WNDense`) on the last axis."""
    kernel, bias = effective_kernel(params)
    return _plus_bias(x @ kernel, bias)


def _plus_bias(x: jax.Array, bias: jax.Array) -> jax.Array:
    return x + bias.reshape((1,) * (x.ndim - 1) + bias.shape)


def _conv_params(params: Any, name: str) -> Any:
    """The {'kernel', 'scale', 'bias'} of a shifted convolution named like 'down_u_3/conv_in' or 'first_u'."""
    node = params
    for part in name.split("/"):
        node = node[part]
    return node["conv"]


def decoder_conditioning(
    decoder: PixelCNNPP,
    params: Any,
    *,
    cond_map: jax.Array | None = None,
    h: jax.Array | None = None,
    skip_extras: Sequence[jax.Array | None] | None = None,
    up_only: bool = True,
) -> Conditioning:
    """The `Conditioning` of `decoder` given what its `up` path (up_only, as in PixelVAE++) or both passes
    (as in `PixelCNNPP.__call__`) receive: cond_map [B, H, W, D] (turned into per-stage features by the
    decoder's own `cond_features`), h [B, D], skip_extras."""
    features = None
    if cond_map is not None:
        features = decoder.apply({"params": params}, cond_map, method=PixelCNNPP.cond_features)
    extras = None if skip_extras is None else tuple(skip_extras)
    if up_only:
        return Conditioning(None, None, features, h, extras)
    return Conditioning(features, h, features, h, extras)

