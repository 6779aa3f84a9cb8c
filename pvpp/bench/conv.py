"""Benchmark of the convolution forms: per layer geometry and direction, the time of each form; writes the table.

    python -m pvpp.bench.conv [--configs NAME,...] [--rounds 9] [--output conv.json] [--write_table PATH] [--quick]
                              [--form FORM] [--update_table PATH]

For each configuration (a flag file, as in `pvpp.bench.train`, on one device), the convolutions of its model are
found by tracing its data-dependent init (`jax.eval_shape`: nothing is compiled) with the forms recorded. For each
distinct geometry (`pvpp.nn.conv_forms.Geometry`, at the configuration's batch) and each direction (forward, input
gradient, filter gradient), every applicable form is compiled, run once, then timed `--rounds` times interleaved
(one call of each form per round), and the medians compared. The choice is the fastest form where it takes at most
`--margin` (default `MARGIN`) times XLA's time, else XLA's convolution. `--rechoose DOC` chooses again from the times
of an earlier document, without measuring.

`--write_table PATH` writes the choices as a table `pvpp.nn.conv_forms` reads (the shipped one is
`pvpp/nn/conv_forms_cpu.json`); the document records the machine, its load and its matmul peak beside the times.
`--form FORM` measures only the geometries FORM can compute (e.g. `patches`, after adding it), and
`--update_table PATH` replaces just the measured geometries' entries of an existing table, each replaced entry
carrying its own measurement record (machine, load, peak, rounds, margin): a new form joins the table without
measuring, and so reshuffling by noise, the choices of every other layer.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from pvpp.bench import train
from pvpp.bench.common import log, machine_info, measured, write_result
from pvpp.bench.peak import matmul_peak
from pvpp.bench.train import flag_file_configs
from pvpp.model import PixelVAEPP
from pvpp.nn import conv_forms

#: A form replaces XLA's convolution only when its median, measured alone, is at most MARGIN x XLA's. Inside the
#: whole step the forms lose part of their isolated advantage (XLA's convolution overlaps better with the ops
#: around it; see pvpp/bench/README.md), so only large isolated gains are taken.
MARGIN = 0.5
DEFAULT_CONFIGS = (
    "mnist_paper", "cifar10_paper", "caltech101_cpu", "mnist_static_cpu_budget", "caltech101_cpu_budget",
    "omniglot_cpu_budget", "cifar10_cpu_budget",
)
#: The paper's configurations split their batch over 8 devices (GPUs): their convolutions run at batch / 8.
DEVICES = {"mnist_paper": 8, "cifar10_paper": 8}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument("--configs", default=None, help=f"comma-separated (default {','.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--rounds", type=int, default=None, help="timed calls of each form (default 9; quick 2)")
    parser.add_argument("--write_table", default=None, help="write the chosen forms as a conv_forms table here")
    parser.add_argument("--margin", type=float, default=MARGIN, help=f"see MARGIN (default {MARGIN})")
    parser.add_argument(
        "--rechoose", default=None, help="a document of this benchmark: choose again from its times (no measuring)"
    )
    parser.add_argument("--form", default=None, choices=conv_forms.FORMS, help="only geometries this form computes")
    parser.add_argument("--update_table", default=None, help="replace the measured geometries' entries of this table")
    parser.add_argument("--quick", action="store_true", help="3 layers of mnist_tiny, 2 rounds")
    args = parser.parse_args(argv)
    if args.update_table and not os.path.exists(args.update_table):
        parser.error(f"--update_table: no table at {args.update_table}")
    if args.update_table and args.write_table:
        parser.error("--update_table and --write_table are exclusive")
    names = (args.configs or ("mnist_tiny" if args.quick else ",".join(DEFAULT_CONFIGS))).split(",")
    unknown = [name for name in names if name not in train.CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {sorted(train.CONFIGS)}")
    rounds = args.rounds or (2 if args.quick else 9)
    if args.rechoose:
        with open(args.rechoose) as f:
            result = json.load(f)
        result["margin"] = args.margin
        for layer in result["layers"].values():
            layer["choice"] = _choice(layer["seconds"], args.margin)
        if args.write_table:
            _write_table(args.write_table, result)
        if args.update_table:
            _update_table(args.update_table, result)
        write_result(result, args.output)
        return result
    peak = matmul_peak(quick=args.quick)
    layers: dict[str, dict] = {}
    for name in names:
        geometries = [(key, g) for key, g in _geometries(name).items() if not args.form or args.form in g.applicable()]
        for key, geometry in geometries[:3] if args.quick else geometries:
            if key in layers:
                layers[key]["configs"].append(name)
                continue
            layers[key] = {"configs": [name], **_measure(geometry, rounds, args.margin)}
            log(f"{name}: {key} batch {geometry.input_shape[0]}: {_summary(layers[key])}")
    result = {
        "benchmark": "pvpp.bench.conv",
        "machine": machine_info(),
        "peak": peak,
        "rounds": rounds,
        "margin": args.margin,
        "layers": layers,
        "load_1min_at_end": os.getloadavg()[0],
    }
    if args.write_table:
        _write_table(args.write_table, result)
    if args.update_table:
        _update_table(args.update_table, result)
    write_result(result, args.output)
    return result


def _geometries(name: str) -> dict[str, conv_forms.Geometry]:
    """{key: Geometry} of every convolution of configuration `name`'s model at its per-device batch."""
    num_devices = DEVICES.get(name, 1)
    model_config, train_config = flag_file_configs(name, 1)  # the global batch; a device's share below
    x = jax.ShapeDtypeStruct((train_config.batch_size // num_devices, *model_config.image_shape), jnp.float32)
    with conv_forms.policy("xla"), conv_forms.recording() as record:
        jax.eval_shape(PixelVAEPP(model_config).init, jax.random.key(0), x, jax.random.key(1))
    return {key: geometry for key, (geometry, _) in record.items()}


def _measure(geometry: conv_forms.Geometry, rounds: int, margin: float) -> dict:
    """{'batch', 'gflop_per_direction', 'seconds': {direction: {form: median}}, 'choice': {direction: form},
    'measurement'} of one geometry."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=geometry.input_shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=geometry.kernel_shape), jnp.float32)
    out_shape = jax.eval_shape(lambda a, b: conv_forms._xla(a, b, geometry), x, kernel).shape
    dout = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    calls = {}
    for direction in conv_forms.DIRECTIONS:
        for form in geometry.applicable():
            fn, args = _direction(direction, form, geometry, x, kernel, dout)
            compiled = jax.jit(fn).lower(*args).compile()
            jax.block_until_ready(compiled(*args))
            calls[direction, form] = (compiled, args)
    times = {call: [] for call in calls}

    def interleaved():
        for _ in range(rounds):
            for call, (compiled, args) in calls.items():
                start = time.perf_counter()
                jax.block_until_ready(compiled(*args))
                times[call].append(time.perf_counter() - start)

    _, record = measured(interleaved)
    seconds = {d: {f: float(np.median(times[d, f])) for (dd, f) in times if dd == d} for d in conv_forms.DIRECTIONS}
    choice = _choice(seconds, margin)
    kh, kw, cin, cout = geometry.kernel_shape
    gflop = 2.0 * np.prod(out_shape[:3]) * kh * kw * cin * cout / 1e9
    return {"batch": geometry.input_shape[0], "gflop_per_direction": float(gflop), "seconds": seconds,
            "choice": choice, "measurement": record}


def _choice(seconds: dict, margin: float) -> dict:
    """{direction: form}: the fastest form where it takes at most `margin` x XLA's time, else XLA."""
    choice = {}
    for direction, by_form in seconds.items():
        best = min(by_form, key=by_form.get)
        choice[direction] = best if by_form[best] <= margin * by_form["xla"] else "xla"
    return choice


def _direction(direction, form, geometry, x, kernel, dout):
    """(function, arguments) computing one direction of one form."""
    if direction == "forward":
        return (lambda a, b: conv_forms.forward(form, a, b, geometry)), (x, kernel)
    if direction == "input_grad":
        return (lambda b, g: conv_forms.input_grad(form, x, b, g, geometry)), (kernel, dout)
    return (lambda a, g: conv_forms.filter_grad(form, a, kernel, g, geometry)), (x, dout)


def _summary(layer: dict) -> str:
    parts = []
    for direction, by_form in layer["seconds"].items():
        times = " ".join(f"{form} {1e3 * t:.2f}" for form, t in by_form.items())
        parts.append(f"{direction} [{times} ms] -> {layer['choice'][direction]}")
    return "; ".join(parts)


def _write_table(path: str, result: dict) -> None:
    table = {
        "about": "pvpp.nn.conv_forms table: per convolution geometry, the form of each direction; written by "
        "python -m pvpp.bench.conv --write_table",
        "measured": _measurement(result),
        "entries": {key: _entry(layer) for key, layer in sorted(result["layers"].items())},
    }
    _save_table(path, table)


def _update_table(path: str, result: dict) -> None:
    """Replace the entries of the geometries `result` measured; each carries its own 'measured' record."""
    with open(path) as f:
        table = json.load(f)
    measurement = _measurement(result)
    for key, layer in result["layers"].items():
        table["entries"][key] = {**_entry(layer), "measured": measurement}
    table["entries"] = dict(sorted(table["entries"].items()))
    _save_table(path, table)


def _measurement(result: dict) -> dict:
    machine = result["machine"]
    return {
        "machine": {k: machine[k] for k in ("platform", "processor", "cpu_count", "jax_version", "jaxlib_version")},
        "load_1min_at_start": machine["load_average_1min_at_start"],
        "load_1min_at_end": result["load_1min_at_end"],
        "matmul_peak_gflops_float32": result["peak"]["float32"]["gflops"],
        "rounds": result["rounds"],
        "margin": result["margin"],
    }


def _entry(layer: dict) -> dict:
    return {"choice": layer["choice"], "batch": layer["batch"], "configs": layer["configs"],
            "median_ms": {d: {f: round(1e3 * t, 4) for f, t in by.items()} for d, by in layer["seconds"].items()}}


def _save_table(path: str, table: dict) -> None:
    """Written to a temporary file and renamed: a crash leaves the old table or the new one, never half of one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(table, indent=1) + "\n")
    os.replace(tmp, path)
    log(f"wrote {path}: {len(table['entries'])} geometries")


if __name__ == "__main__":
    main()
