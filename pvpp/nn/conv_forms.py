"""One convolution, several forms that compute the same values, chosen per layer and per direction.

`conv(x, kernel, strides, padding, lhs_dilation)` is the NHWC / HWIO convolution

    out[b, i, j, :] = sum_{p, q} xp[b, s_h i + p, s_w j + q, :] @ kernel[p, q]        (p < kh, q < kw)

where xp is x dilated by `lhs_dilation` (d - 1 zeros between entries: a transposed convolution) and then padded by
`padding` ((top, bottom), (left, right); negative pads crop). It has three directions, each a linear map:
the forward pass (x -> out), the input gradient (the transpose of x -> out applied to dout) and the filter
gradient (the transpose of kernel -> out). Each direction can be computed by any of these forms:

- `xla`: `lax.conv_general_dilated` (and, for the gradients, the convolutions JAX's transpose rules make of it).
- `taps`: one matrix product per kernel tap, [B*Ho*Wo, C_in] x [C_in, C_out], over strided slices of xp, summed.
- `im2col`: the taps' slices concatenated on the channel axis, then one product [B*Ho*Wo, kh*kw*C_in] x
  [kh*kw*C_in, C_out]; fewer, larger products than `taps` (better for few channels).
- `scatter` (dilated input only, i.e. transposed convolutions with stride 1): x times every tap at once,
  [B*H*W, C_in] x [C_in, kh*kw*C_out], and each tap's product dilated and shifted into place: no products with
  the dilation's zeros.
- `patches` (windows that tile the input: strides equal to the kernel, no padding, no dilation): the input
  reshaped to its non-overlapping [kh, kw, C_in] patches and one product [B*Ho*Wo, kh*kw*C_in] x
  [kh*kw*C_in, C_out]; its gradients are products and reshapes too (XLA makes the input gradient of such a
  strided convolution a convolution of the zero-dilated output gradient).

A form's gradient directions are the transposes (`jax.vjp`) of its forward map, so every combination computes the
same values up to float32 rounding (the order of the sums differs). Which form each direction uses is a `Choice`,
looked up per layer geometry in a table measured by `python -m pvpp.bench.conv` and shipped beside this file
(`conv_forms_cpu.json`): deterministic for a given table, and recorded in a run's metadata (`choices_made`).
A geometry the table does not list, any backend but the CPU, and the `xla` policy use `xla` everywhere, which is
exactly `lax.conv_general_dilated` with JAX's own gradients (no custom_vjp).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import pathlib
import re
from typing import Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import jaxlib

FORMS = ("xla", "taps", "im2col", "scatter", "patches")
DIRECTIONS = ("forward", "input_grad", "filter_grad")
POLICIES = ("table", "xla")
TABLE_PATH = pathlib.Path(__file__).with_name("conv_forms_cpu.json")


class Geometry(NamedTuple):
    """A convolution's static shape: input [B, H, W, C_in], kernel [kh, kw, C_in, C_out], window strides,
    explicit padding pairs and input (lhs) dilation."""

    input_shape: tuple[int, int, int, int]
    kernel_shape: tuple[int, int, int, int]
    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    lhs_dilation: tuple[int, int]

    def key(self) -> str:
        """The table key: everything but the batch size, e.g. 'conv 28x28 128->64 k2x3 s1x1 d1x1 p1,0;1,1'."""
        _, h, w, cin = self.input_shape
        kh, kw, _, cout = self.kernel_shape
        (pt, pb), (pl, pr) = self.padding
        kind = "transposed" if self.lhs_dilation != (1, 1) else "conv"
        return (
            f"{kind} {h}x{w} {cin}->{cout} k{kh}x{kw} s{self.strides[0]}x{self.strides[1]} "
            f"d{self.lhs_dilation[0]}x{self.lhs_dilation[1]} p{pt},{pb};{pl},{pr}"
        )

    def applicable(self) -> tuple[str, ...]:
        """The forms that can compute this geometry (`scatter` needs a dilated input and unit strides, `patches`
        windows that tile the input)."""
        forms = ("xla", "taps", "im2col")
        if self.lhs_dilation != (1, 1) and self.strides == (1, 1):
            forms += ("scatter",)
        if self.lhs_dilation == (1, 1) and self.strides == self.kernel_shape[:2] and self.padding == ((0, 0), (0, 0)):
            forms += ("patches",)
        return forms


class Choice(NamedTuple):
    """The form of each direction."""

    forward: str = "xla"
    input_grad: str = "xla"
    filter_grad: str = "xla"


XLA = Choice()


def conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int] = (1, 1),
    padding: str | Sequence[tuple[int, int]] = "VALID",
    lhs_dilation: Sequence[int] = (1, 1),
) -> jax.Array:
    """x [B, H, W, C_in], kernel [kh, kw, C_in, C_out] -> [B, Ho, Wo, C_out], each direction in its chosen form."""
    geometry = geometry_of(x.shape, kernel.shape, strides, padding, lhs_dilation)
    choice = choose(geometry, jax.default_backend())
    _record(geometry, choice)
    if choice == XLA:
        return _xla(x, kernel, geometry)
    return _conv_in_forms(x, kernel, geometry, choice)


def geometry_from_key(key: str, batch: int = 1) -> Geometry:
    """The Geometry whose `key()` is `key`, at batch size `batch` (the key does not hold it)."""
    match = _KEY.fullmatch(key)
    if match is None:
        raise ValueError(f"not a convolution geometry key: {key!r}")
    h, w, cin, cout, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr = (int(v) for v in match.groups()[1:])
    geometry = Geometry((batch, h, w, cin), (kh, kw, cin, cout), (sh, sw), ((pt, pb), (pl, pr)), (dh, dw))
    if geometry.key() != key:
        raise ValueError(f"not a convolution geometry key: {key!r}")
    return geometry


_KEY = re.compile(r"(conv|transposed) (\d+)x(\d+) (\d+)->(\d+) k(\d+)x(\d+) s(\d+)x(\d+) d(\d+)x(\d+) "
                  r"p(-?\d+),(-?\d+);(-?\d+),(-?\d+)")


def geometry_of(input_shape, kernel_shape, strides, padding, lhs_dilation=(1, 1)) -> Geometry:
    """The static geometry, with a string padding ('SAME', 'VALID') resolved to explicit pairs."""
    strides, lhs_dilation = tuple(int(s) for s in strides), tuple(int(d) for d in lhs_dilation)
    if isinstance(padding, str):
        dilated = [(n - 1) * d + 1 for n, d in zip(input_shape[1:3], lhs_dilation)]
        padding = jax.lax.padtype_to_pads(dilated, kernel_shape[:2], strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return Geometry(tuple(input_shape), tuple(kernel_shape), strides, padding, lhs_dilation)


# ----------------------------------------------------------------------------------------------------------------
# The choice: a policy (set for a block of code), the shipped table, and the record of what was chosen.

class _State:
    policy: str = "table"
    record: dict | None = None


_state = _State()  # process-wide, like jax.config: traces from any thread see one policy


def set_policy(name: str) -> None:
    """Convolutions traced from now on use `name`: 'table' (the default) or 'xla' (XLA everywhere). A change
    clears JAX's caches of traced and compiled functions, so nothing traced under the other policy is reused."""
    if name not in POLICIES:
        raise ValueError(f"--conv_forms must be one of {', '.join(POLICIES)}, got {name!r}")
    if name != current_policy():
        _state.policy = name
        jax.clear_caches()


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """`set_policy(name)` within the block, the previous policy after it."""
    previous = current_policy()
    set_policy(name)
    try:
        yield
    finally:
        set_policy(previous)


def current_policy() -> str:
    return _state.policy



def choose(geometry: Geometry, backend: str) -> Choice:
    """The forms for `geometry` on `backend` under the current policy (XLA unless the CPU table lists it)."""
    if current_policy() == "xla" or backend != "cpu":
        return XLA
    entry = table()["entries"].get(geometry.key())
    if entry is None:
        return XLA
    return Choice(*(entry["choice"][direction] for direction in DIRECTIONS))


@functools.lru_cache(maxsize=None)
def table() -> dict:
    """The shipped CPU table {'entries': {geometry key: {'choice': {direction: form}, ...}}, 'measured': ...}."""
    if not TABLE_PATH.exists():
        return {"entries": {}}
    data = json.loads(TABLE_PATH.read_text())
    for key, entry in data["entries"].items():
        try:
            forms = geometry_from_key(key).applicable()
        except ValueError as error:
            raise ValueError(f"{TABLE_PATH}: {error}") from None
        bad = [f for f in entry["choice"].values() if f not in forms]
        if sorted(entry["choice"]) != sorted(DIRECTIONS) or bad:
            raise ValueError(f"{TABLE_PATH}: entry {key!r} has a bad choice {entry['choice']}")
    return data


def table_digest() -> str:
    """sha256 (16 hex digits) of the shipped table's bytes: which table a run's choices came from."""
    if not TABLE_PATH.exists():
        return "none"
    return hashlib.sha256(TABLE_PATH.read_bytes()).hexdigest()[:16]


@contextlib.contextmanager
def recording() -> Iterator[dict]:
    """Collects {geometry key: (Geometry, Choice)} of every convolution traced in the block."""
    previous = _state.record
    _state.record = {}
    try:
        yield _state.record
    finally:
        _state.record = previous


def metadata(choices: dict) -> dict:
    """What a run records about its convolutions: the policy, backend, table digest and the per-layer choices
    ({geometry key: {direction: form}}) of a `recording`."""
    return {
        "policy": current_policy(),
        "backend": jax.default_backend(),
        "table": TABLE_PATH.name,
        "table_sha256_16": table_digest(),
        "jaxlib": jaxlib.__version__,
        "layers": {key: choice._asdict() for key, (_, choice) in sorted(choices.items())},
    }


def _record(geometry: Geometry, choice: Choice) -> None:
    if _state.record is not None:
        _state.record[geometry.key()] = (geometry, choice)


# ----------------------------------------------------------------------------------------------------------------
# The forms (each a forward map of (x, kernel); the gradients are their transposes) and the custom_vjp joining them.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_in_forms(x: jax.Array, kernel: jax.Array, geometry: Geometry, choice: Choice) -> jax.Array:
    return forward(choice.forward, x, kernel, geometry)


def _conv_fwd(x, kernel, geometry, choice):
    return forward(choice.forward, x, kernel, geometry), (x, kernel)


def _conv_bwd(geometry, choice, residuals, dout):
    x, kernel = residuals
    return (
        input_grad(choice.input_grad, x, kernel, dout, geometry),
        filter_grad(choice.filter_grad, x, kernel, dout, geometry),
    )


def forward(form: str, x: jax.Array, kernel: jax.Array, geometry: Geometry) -> jax.Array:
    """The forward map [B, H, W, C_in] -> [B, Ho, Wo, C_out] in `form`."""
    return _FORWARD[form](x, kernel, geometry)


def input_grad(form: str, x: jax.Array, kernel: jax.Array, dout: jax.Array, geometry: Geometry) -> jax.Array:
    """The input gradient [B, H, W, C_in] of `form`: its forward map's transpose applied to dout [B, Ho, Wo, C_out]."""
    _, transpose = jax.vjp(lambda x_: forward(form, x_, kernel, geometry), x)
    return transpose(dout)[0]


def filter_grad(form: str, x: jax.Array, kernel: jax.Array, dout: jax.Array, geometry: Geometry) -> jax.Array:
    """The filter gradient [kh, kw, C_in, C_out] of `form` for dout [B, Ho, Wo, C_out]."""
    _, transpose = jax.vjp(lambda k_: forward(form, x, k_, geometry), kernel)
    return transpose(dout)[0]


_conv_in_forms.defvjp(_conv_fwd, _conv_bwd)


def _xla(x: jax.Array, kernel: jax.Array, g: Geometry) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, g.strides, g.padding, lhs_dilation=g.lhs_dilation, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _tap_slices(x: jax.Array, g: Geometry) -> tuple[list[jax.Array], tuple[int, int]]:
    """The kh*kw strided slices [B, Ho, Wo, C_in] of the dilated, padded input (tap (p, q) at index p*kw + q)."""
    (dh, dw), (sh, sw) = g.lhs_dilation, g.strides
    (pt, pb), (pl, pr) = g.padding
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, dh - 1), (pl, pr, dw - 1), (0, 0, 0)))
    kh, kw = g.kernel_shape[:2]
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    slices = [
        jax.lax.slice(xp, (0, p, q, 0), (xp.shape[0], p + sh * (ho - 1) + 1, q + sw * (wo - 1) + 1, xp.shape[3]),
                      (1, sh, sw, 1))
        for p in range(kh) for q in range(kw)
    ]
    return slices, (ho, wo)


def _taps(x: jax.Array, kernel: jax.Array, g: Geometry) -> jax.Array:
    slices, _ = _tap_slices(x, g)
    kh, kw = kernel.shape[:2]
    out = None
    for index, piece in enumerate(slices):
        term = jnp.einsum("bhwc,co->bhwo", piece, kernel[index // kw, index % kw])
        out = term if out is None else out + term
    return out


def _im2col(x: jax.Array, kernel: jax.Array, g: Geometry) -> jax.Array:
    slices, _ = _tap_slices(x, g)
    patches = jnp.concatenate(slices, axis=-1)  # [B, Ho, Wo, kh*kw*C_in], tap-major like the kernel's reshape
    return jnp.einsum("bhwk,ko->bhwo", patches, kernel.reshape(-1, kernel.shape[-1]))


def _scatter(x: jax.Array, kernel: jax.Array, g: Geometry) -> jax.Array:
    """Dilated input, unit strides: out[r, c] = sum_{p,q} xp[r + p, c + q] @ k[p, q], and xp[r + p, c + q] is
    x[i, j] where r + p = top + d i (and likewise for columns): tap (p, q)'s product x @ k[p, q], dilated by d and
    shifted by (top - p, left - q), lands exactly on the outputs it feeds."""
    kh, kw, _, cout = kernel.shape
    (dh, dw) = g.lhs_dilation
    (pt, pb), (pl, pr) = g.padding
    batch, h, w, _ = x.shape
    ho = (h - 1) * dh + 1 + pt + pb - kh + 1
    wo = (w - 1) * dw + 1 + pl + pr - kw + 1
    products = jnp.einsum("bhwc,cto->bhwto", x, kernel.reshape(kh * kw, *kernel.shape[2:]).transpose(1, 0, 2))
    out = None
    for p in range(kh):
        for q in range(kw):
            tap = products[:, :, :, p * kw + q]
            # Rows: dilated map row d*i lands on output row d*i + top - p; pad so the output spans [0, ho).
            top, left = pt - p, pl - q
            bottom = ho - ((h - 1) * dh + 1) - top
            right = wo - ((w - 1) * dw + 1) - left
            placed = jax.lax.pad(
                tap, jnp.zeros((), tap.dtype), ((0, 0, 0), (top, bottom, dh - 1), (left, right, dw - 1), (0, 0, 0))
            )
            out = placed if out is None else out + placed
    assert out.shape == (batch, ho, wo, cout)
    return out


def _patches(x: jax.Array, kernel: jax.Array, g: Geometry) -> jax.Array:
    """Strides equal to the kernel, no padding: out[b, i, j] = sum_{p, q} x[b, kh i + p, kw j + q] @ k[p, q], a
    product of the input's non-overlapping patches (rows and columns past the last whole window are unused)."""
    kh, kw, cin, _ = kernel.shape
    batch, h, w, _ = x.shape
    ho, wo = h // kh, w // kw
    patches = x[:, : ho * kh, : wo * kw].reshape(batch, ho, kh, wo, kw, cin)
    return jnp.einsum("bipjqc,pqco->bijo", patches, kernel)


_FORWARD = {"xla": _xla, "taps": _taps, "im2col": _im2col, "scatter": _scatter, "patches": _patches}
