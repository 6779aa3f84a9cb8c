"""The machine's matmul peak, measured in the benchmark's own process: float32 and bfloat16-input GFLOP/s.

    python -m pvpp.bench.peak [--output peak.json] [--quick] [--n N] [--repeats R]

An n x n x n `jnp.dot` (2 n^3 FLOPs), jit-compiled, warmed up once, then timed R times; the figure is the best
(fastest) repeat. float32: float32 inputs at jax's default matmul precision, the precision the models run at (on
recent NVIDIA GPUs this lets XLA use TF32). bfloat16: bfloat16 inputs, float32 accumulation and output
(`preferred_element_type=jnp.float32`). Every compute benchmark runs this in its own process, next to its figures,
and states each figure's GFLOP/s as a fraction of the float32 peak (`fraction_of_peak`).

Default n: 2048 on CPU; 8192 on an accelerator, where a 2048^3 matmul takes tens of microseconds and the dispatch
would dominate the timing.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

from pvpp.bench.common import log, machine_info, measured, timed, write_result

QUICK_N = 256
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument("--quick", action="store_true", help=f"n = {QUICK_N}, for a smoke run")
    parser.add_argument(
        "--n", type=int, default=None, help="matrix size (default: 2048 on CPU, 8192 otherwise)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after the warm-up")
    args = parser.parse_args(argv)
    result = {
        "benchmark": "pvpp.bench.peak",
        "machine": machine_info(),
        "peak": matmul_peak(args.n, args.repeats, args.quick),
    }
    write_result(result, args.output)
    return result


def matmul_peak(n: int | None = None, repeats: int = 3, quick: bool = False) -> dict:
    """{'n', 'repeats', 'float32': {...}, 'bfloat16': {...}}: per input dtype the best GFLOP/s (1e9 FLOPs per
    second) of an n^3 matmul, its seconds, and the `measured` record (wall / CPU seconds, load) of the repeats."""
    n = n or default_size(quick)
    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be >= 1, got n={n}, repeats={repeats}")
    flops = 2.0 * n**3
    result = {"n": n, "repeats": repeats, "flops_per_matmul": flops}
    for name, dtype in DTYPES.items():
        x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
        y = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
        product = jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32))
        timed(lambda: product(x, y))  # warm-up: compilation and first run
        seconds, record = measured(lambda: [timed(lambda: product(x, y))[1] for _ in range(repeats)])
        best = min(seconds)
        result[name] = {"gflops": flops / best / 1e9, "best_seconds": best, "measurement": record}
    log(
        f"matmul peak (n={n}, best of {repeats}): float32 {result['float32']['gflops']:.1f} GFLOP/s, "
        f"bfloat16 inputs {result['bfloat16']['gflops']:.1f} GFLOP/s"
    )
    return result


def fraction_of_peak(gflops: float | None, peak: dict) -> float | None:
    """`gflops` as a fraction of the float32 peak (`matmul_peak`'s), None when gflops is unknown."""
    return None if gflops is None else gflops / peak["float32"]["gflops"]


def default_size(quick: bool) -> int:
    """The matrix size n: QUICK_N when quick, else 2048 on CPU and 8192 on an accelerator."""
    if quick:
        return QUICK_N
    return 2048 if jax.default_backend() == "cpu" else 8192


if __name__ == "__main__":
    main()
