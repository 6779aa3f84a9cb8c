"""The convolution forms compute XLA's convolution: outputs and both gradients, for every layer type of the model
(shifted, strided, transposed, SAME) and every direction; the table chooses them, the 'xla' policy never does, and
a training run gives the same losses with the forms as with XLA's convolution everywhere, and records its choices."""

from __future__ import annotations

import contextlib
import json

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pvpp.bench.common import random_variables
from pvpp.model import PixelVAEPP
from pvpp.nn import conv_forms
from pvpp.nn.weightnorm import conv_transpose

# (input [B, H, W, C_in], kernel [kh, kw, C_in, C_out], strides, padding, input dilation): one geometry per layer
# type of the model: the shifted convolutions (2x3 down, 2x2 down-right, the first layers' 1x3 and 2x1), their
# stride-2 forms on even and odd sizes, the transposed ones (dilated input), the SAME 3x3 of the encoders and
# conditioning maps (stride 1 and 2), the latent map's 3x3 transposed convolution, and the skip encoders' windows
# that tile their input (strides equal to the kernel; on an odd size the last row and column are unused).
GEOMETRIES = {
    "down 2x3": ((2, 8, 8, 5), (2, 3, 5, 4), (1, 1), ((1, 0), (1, 1)), (1, 1)),
    "down-right 2x2": ((2, 8, 8, 5), (2, 2, 5, 4), (1, 1), ((1, 0), (1, 0)), (1, 1)),
    "first 1x3": ((2, 8, 8, 3), (1, 3, 3, 4), (1, 1), ((0, 0), (1, 1)), (1, 1)),
    "first 2x1": ((2, 8, 8, 3), (2, 1, 3, 4), (1, 1), ((1, 0), (0, 0)), (1, 1)),
    "down 2x3 stride 2": ((2, 8, 8, 5), (2, 3, 5, 4), (2, 2), ((1, 0), (1, 1)), (1, 1)),
    "down-right 2x2 stride 2, odd": ((2, 7, 7, 5), (2, 2, 5, 4), (2, 2), ((1, 0), (1, 0)), (1, 1)),
    "transposed down 2x3": ((2, 4, 4, 5), (2, 3, 5, 4), (1, 1), ((1, 1), (1, 2)), (2, 2)),
    "transposed down-right 2x2": ((2, 4, 4, 5), (2, 2, 5, 4), (1, 1), ((1, 1), (1, 1)), (2, 2)),
    "transposed 3x3 latent map": ((2, 4, 4, 5), (3, 3, 5, 4), (1, 1), ((1, 2), (1, 2)), (2, 2)),
    "SAME 3x3": ((2, 8, 8, 5), (3, 3, 5, 4), (1, 1), "SAME", (1, 1)),
    "SAME 3x3 stride 2": ((2, 8, 8, 5), (3, 3, 5, 4), (2, 2), "SAME", (1, 1)),
    "skip encoder 4x4 stride 4": ((2, 8, 8, 5), (4, 4, 5, 1), (4, 4), "VALID", (1, 1)),
    "tiling 2x2 stride 2, odd": ((2, 7, 7, 5), (2, 2, 5, 3), (2, 2), "VALID", (1, 1)),
}
#: float32 rounding: the forms sum the same products in another order (relative to the largest value).
RELATIVE_TOLERANCE = 1e-5


def _arrays(geometry, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=geometry.input_shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=geometry.kernel_shape), jnp.float32)
    out_shape = jax.eval_shape(lambda a, b: conv_forms.forward("xla", a, b, geometry), x, kernel).shape
    return x, kernel, jnp.asarray(rng.normal(size=out_shape), jnp.float32)


def _close(got, want, what):
    assert got.shape == want.shape, what
    error = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
    assert error < RELATIVE_TOLERANCE, f"{what}: relative error {error:.2e}"


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_every_form_and_direction_equals_xla(name):
    geometry = conv_forms.geometry_of(*GEOMETRIES[name])
    x, kernel, dout = _arrays(geometry)
    want_out, vjp = jax.vjp(lambda a, b: conv_forms.forward("xla", a, b, geometry), x, kernel)
    want_dx, want_dk = vjp(dout)
    for form in geometry.applicable():
        # Each form's forward and its transposes (the gradient directions the custom_vjp uses).
        got_out, vjp = jax.jit(lambda a, b: jax.vjp(lambda a_, b_: conv_forms.forward(form, a_, b_, geometry),
                                                    a, b))(x, kernel)[0:2]
        got_dx, got_dk = vjp(dout)
        _close(got_out, want_out, f"{name}, {form}: output")
        _close(got_dx, want_dx, f"{name}, {form}: input gradient")
        _close(got_dk, want_dk, f"{name}, {form}: filter gradient")
    # The custom_vjp joining three different forms: each direction is its own form's.
    forms = geometry.applicable()
    choice = conv_forms.Choice(forms[1], forms[-1], forms[2])
    got_out, vjp = jax.vjp(lambda a, b: conv_forms._conv_in_forms(a, b, geometry, choice), x, kernel)
    got_dx, got_dk = vjp(dout)
    _close(got_out, want_out, f"{name}, {choice}: output")
    _close(got_dx, want_dx, f"{name}, {choice}: input gradient")
    _close(got_dk, want_dk, f"{name}, {choice}: filter gradient")


def test_each_form_is_offered_exactly_where_it_can_compute_the_geometry():
    offered = {name: conv_forms.geometry_of(*spec).applicable() for name, spec in GEOMETRIES.items()}
    assert {name for name, forms in offered.items() if "scatter" in forms} == {
        name for name in GEOMETRIES if name.startswith("transposed")
    }
    assert {name for name, forms in offered.items() if "patches" in forms} == {
        "skip encoder 4x4 stride 4", "tiling 2x2 stride 2, odd"
    }
    assert all(forms[:3] == ("xla", "taps", "im2col") for forms in offered.values())


def test_the_transposed_convolution_scatters_each_input_to_its_taps():
    """conv_transpose (now through conv_forms) against its definition: out[s i + p, s j + q] += x[i, j] @ k[p, q]."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 3, 3, 2)).astype(np.float32)
    kernel = rng.normal(size=(2, 3, 2, 4)).astype(np.float32)
    want = np.zeros((1, 2 * 2 + 2, 2 * 2 + 3, 4), np.float32)
    for i in range(3):
        for j in range(3):
            for p in range(2):
                for q in range(3):
                    want[0, 2 * i + p, 2 * j + q] += x[0, i, j] @ kernel[p, q]
    with _table_choosing_every_form():
        got = conv_transpose(jnp.asarray(x), jnp.asarray(kernel), (2, 2))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_the_table_decides_and_the_xla_policy_is_plain_xla(monkeypatch):
    geometry = conv_forms.geometry_of(*GEOMETRIES["down 2x3"])
    x, kernel, _ = _arrays(geometry)
    choice = {"forward": "taps", "input_grad": "im2col", "filter_grad": "xla"}
    monkeypatch.setattr(conv_forms, "table", lambda: {"entries": {geometry.key(): {"choice": choice}}})
    with conv_forms.recording() as record:
        jaxpr = jax.make_jaxpr(lambda a, b: conv_forms.conv(a, b, (1, 1), geometry.padding))(x, kernel)
    assert record[geometry.key()][1]._asdict() == choice or jax.default_backend() != "cpu"
    if jax.default_backend() == "cpu":
        assert "custom_vjp_call" in str(jaxpr) and "conv_general_dilated" not in str(jaxpr)
    with conv_forms.policy("xla"), conv_forms.recording() as record:
        jaxpr = jax.make_jaxpr(lambda a, b: conv_forms.conv(a, b, (1, 1), geometry.padding))(x, kernel)
    assert record[geometry.key()][1] == conv_forms.XLA
    assert "custom_vjp_call" not in str(jaxpr) and "conv_general_dilated" in str(jaxpr)
    with pytest.raises(ValueError, match="--conv_forms must be one of table, xla"):
        conv_forms.set_policy("fast")


def test_the_shipped_table_is_valid_and_names_only_applicable_forms():
    data = conv_forms.table()
    assert data["entries"], "the shipped table lists no geometry"
    for key, entry in data["entries"].items():
        assert set(entry["choice"]) == set(conv_forms.DIRECTIONS), key
        assert set(entry["choice"].values()) <= set(conv_forms.geometry_from_key(key).applicable()), key
    assert len(conv_forms.table_digest()) == 16


def test_a_geometry_key_names_its_geometry_and_a_table_with_an_inapplicable_form_is_refused(tmp_path, monkeypatch):
    for name, spec in GEOMETRIES.items():
        geometry = conv_forms.geometry_of(*spec)
        assert conv_forms.geometry_from_key(geometry.key(), geometry.input_shape[0]) == geometry, name
    with pytest.raises(ValueError, match="not a convolution geometry key"):
        conv_forms.geometry_from_key("conv 8x8 5->4 k2x3")
    key = conv_forms.geometry_of(*GEOMETRIES["down 2x3"]).key()
    bad = tmp_path / "table.json"
    bad.write_text(json.dumps({"entries": {key: {"choice": {"forward": "patches", "input_grad": "xla",
                                                            "filter_grad": "xla"}}}}))
    monkeypatch.setattr(conv_forms, "TABLE_PATH", bad)
    conv_forms.table.cache_clear()
    try:
        with pytest.raises(ValueError, match="has a bad choice"):
            conv_forms.table()
        bad.write_text(json.dumps({"entries": {"conv 8x8 5->4": {"choice": {}}}}))
        conv_forms.table.cache_clear()
        with pytest.raises(ValueError, match="table.json: not a convolution geometry key: 'conv 8x8 5->4'"):
            conv_forms.table()
    finally:
        monkeypatch.undo()
        conv_forms.table.cache_clear()


def test_the_model_gives_the_same_loss_and_gradients_with_every_form():
    """A PixelVAE++ (shifted, strided, transposed, encoder and latent-map convolutions) with non-XLA forms in
    every direction of every layer gives XLA's loss and gradients to float32 rounding."""
    from pvpp.model import ModelConfig

    config = ModelConfig(image_shape=(8, 8, 1), nr_resnet=1, nr_filters=4, num_concat_latents=8, rbm_num_left=4,
                         encoder_filters=4, downsample=True)
    model = PixelVAEPP(config)
    x = jnp.where(jax.random.uniform(jax.random.key(0), (2, 8, 8, 1)) < 0.3, 1.0, -1.0)
    variables = random_variables(model.init, jax.random.key(1), x, jax.random.key(2))

    def loss(params):
        out = model.apply({**variables, "params": params}, x, jax.random.key(3))
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(out) if jnp.issubdtype(leaf.dtype, jnp.floating))

    with conv_forms.policy("xla"):
        want = jax.jit(jax.value_and_grad(loss))(variables["params"])
    with _table_choosing_every_form():
        got = jax.jit(jax.value_and_grad(loss))(variables["params"])
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
    want_leaves, got_leaves = jax.tree.leaves(want[1]), jax.tree.leaves(got[1])
    assert len(got_leaves) == len(want_leaves) and jax.tree.structure(got[1]) == jax.tree.structure(want[1])
    for g, w in zip(got_leaves, want_leaves):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-4, atol=2e-5 * float(jnp.max(jnp.abs(w))))


class _table_choosing_every_form:
    """A context in which every geometry gets non-XLA forms (rotating over them by direction) on any backend."""

    def __enter__(self):
        self._choose = conv_forms.choose

        def choose(geometry, backend):
            forms = geometry.applicable()[1:]
            return conv_forms.Choice(forms[0], forms[-1], forms[1 % len(forms)])

        conv_forms.choose = choose
        jax.clear_caches()
        return self

    def __exit__(self, *exc):
        conv_forms.choose = self._choose
        jax.clear_caches()


@pytest.mark.slow  # two short trainings
def test_a_training_run_records_its_forms_and_matches_xla(tmp_path):
    """Three steps of the tiny training run with the forms and with XLA's convolution everywhere: the same losses
    to float32 rounding; each run's conv_forms.json names its policy and every layer's choice."""
    losses = {}
    for policy in ("table", "xla"):
        workdir = tmp_path / policy
        with _table_choosing_every_form() if policy == "table" else contextlib.nullcontext():
            helpers.run(workdir, num_steps=4, log_every=1, eval_every=4, conv_forms=policy)
        record = json.loads((workdir / "conv_forms.json").read_text())
        assert record["policy"] == policy and record["layers"]
        uses_xla = {all(f == "xla" for f in choice.values()) for choice in record["layers"].values()}
        assert uses_xla == ({False} if policy == "table" else {True})
        metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        losses[policy] = [r["train/loss"] for r in metrics if "train/loss" in r]
    assert conv_forms.current_policy() == "table"  # the run's policy held for the run only
    assert len(losses["table"]) == len(losses["xla"]) == 4
    np.testing.assert_allclose(losses["table"], losses["xla"], rtol=1e-4)


def test_updating_the_table_replaces_only_the_measured_geometries(tmp_path):
    from pvpp.bench import conv as bench_conv

    old = {"about": "a table", "measured": {"load_1min_at_start": 0.1}, "entries": {
        "conv 8x8 5->4 k2x3 s1x1 d1x1 p1,0;1,1": {"choice": {"forward": "taps", "input_grad": "xla",
                                                             "filter_grad": "xla"}, "batch": 2},
        "conv 8x8 5->1 k4x4 s4x4 d1x1 p0,0;0,0": {"choice": {"forward": "xla", "input_grad": "xla",
                                                             "filter_grad": "xla"}, "batch": 2},
    }}
    path = tmp_path / "table.json"
    path.write_text(json.dumps(old))
    key = "conv 8x8 5->1 k4x4 s4x4 d1x1 p0,0;0,0"
    times = {d: {"xla": 2e-3, "patches": 5e-4} for d in conv_forms.DIRECTIONS}
    result = {
        "machine": {"platform": "p", "processor": "", "cpu_count": 2, "jax_version": "j", "jaxlib_version": "j",
                    "load_average_1min_at_start": 0.5},
        "load_1min_at_end": 0.6, "peak": {"float32": {"gflops": 200.0}}, "rounds": 9, "margin": 0.5,
        "layers": {key: {"configs": ["x"], "batch": 2, "seconds": times,
                         "choice": bench_conv._choice(times, 0.5)}},
    }
    bench_conv._update_table(str(path), result)
    new = json.loads(path.read_text())
    assert new["measured"] == old["measured"] and new["about"] == old["about"]
    untouched = "conv 8x8 5->4 k2x3 s1x1 d1x1 p1,0;1,1"
    assert new["entries"][untouched] == old["entries"][untouched]
    assert new["entries"][key]["choice"] == {d: "patches" for d in conv_forms.DIRECTIONS}
    assert new["entries"][key]["measured"]["load_1min_at_end"] == 0.6
    assert not list(tmp_path.glob("*.tmp"))
