"""Achieved GFLOP/s of a compiled step, from XLA's cost analysis, as a fraction of the measured matmul peak.

XLA's cost analysis counts the FLOPs of the compiled program as written: a loop body (`while`, `scan`,
`fori_loop`) is counted once, whatever its trip count. So it is used for loop-free steps only (the decoder's
forward + backward and the train step, whose only loop is the short Gibbs sweep of the PCD chains). For a pmapped
program the count is per device.
"""

from __future__ import annotations

from typing import Any

from pvpp.bench.peak import fraction_of_peak


def achieved(compiled: Any, seconds_per_call: float, peak: dict, num_devices: int = 1) -> dict:
    """{'flops_per_call', 'gflops', 'fraction_of_peak'} of a `jax.stages.Compiled` program that ran in
    `seconds_per_call` wall seconds on `num_devices` devices (FLOPs per call summed over them; GFLOP/s = 1e9 FLOPs
    per second). Every value is None when XLA gives no FLOP count."""
    per_device = compiled_flops(compiled)
    flops = None if per_device is None else per_device * num_devices
    gflops = None if flops is None else flops / seconds_per_call / 1e9
    return {"flops_per_call": flops, "gflops": gflops, "fraction_of_peak": fraction_of_peak(gflops, peak)}


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled program (per device) per XLA's cost analysis; None when the backend gives
    none. jax 0.10 returns one dict; older versions a list with one dict per program (the first is taken)."""
    try:
        analysis = compiled.cost_analysis()
    except (
        NotImplementedError,
        RuntimeError,
    ):  # backends without a cost model raise instead of returning None
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None  # XLA reports -1 for "unknown"
