"""How much log Z of an RBM prior moves with the AIS effort, and what the matmul precision does to its sampler.

    python -m pvpp.bench.log_partition [--workdir=RUN | --quick] [--efforts=cpu,chains_x10,sweeps_x50]
        [--seed=0] [--output=log_partition.json]

(a) Effort. For the RBM of a trained run (`--workdir`: its EMA parameters, as evaluation uses them; `--quick`: a
    random 16 + 16 RBM) forward and reverse AIS (`pvpp.priors.reverse_ais.two_sided_log_partition`) at each named
    effort: `cpu` (the evaluation's default preset: 1000 chains x 10,000 temperatures x 1 sweep), `chains_x10`
    (10,000 chains), `sweeps_x50` (50 sweeps per temperature), `paper` (50,000 x 10,000 x 50; for a GPU). Each
    gives both estimates, their spreads, effective sample sizes, the seconds and how far each estimate moved from
    the first effort's. Where the smaller side has <= 20 units the exact log Z is added.
(b) Precision. On an enumerable random 16 + 64 RBM (weights of scale 0.5), the sampling conditionals' logits
    b + W^T zL and a + W zR at the backend's default float32 matmul precision against full precision (largest
    absolute difference, in nats of logit), and forward AIS at full precision against the exact log Z. On a CPU
    the two precisions are the same computation (difference 0); on an NVIDIA GPU the default is TF32. pvpp's
    samplers always ask for full precision (`pvpp.priors.rbm.EXACT`).

Writes one JSON document (to --output, or stdout) with the machine and each figure's `measured` record.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from pvpp.bench.common import log, machine_info, measured, write_result
from pvpp.inference import load_model
from pvpp.priors import ais, make_prior, rbm, reverse_ais

#: Named AIS efforts: changes from the evaluation's 'cpu' preset.
EFFORTS = {
    "cpu": {},
    "chains_x10": {"num_chains": 10000},
    "sweeps_x50": {"sweeps_per_beta": 50},
    "paper": dict(ais.PRESETS["paper"].to_dict()),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="training run whose RBM to use")
    parser.add_argument("--efforts", default="cpu,chains_x10,sweeps_x50", help="comma-separated names of EFFORTS")
    parser.add_argument("--seed", type=int, default=0, help="root key of the AIS runs")
    parser.add_argument("--output", default=None, help="JSON file to write (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="a random 16 + 16 RBM and tiny efforts")
    args = parser.parse_args(argv)
    names = [name for name in args.efforts.split(",") if name]
    unknown = [name for name in names if name not in EFFORTS]
    if unknown:
        parser.error(f"--efforts: unknown {unknown}; choose from {sorted(EFFORTS)}")
    params, source = _rbm_of(args.workdir, args.quick)
    result = {
        "benchmark": "pvpp.bench.log_partition",
        "machine": machine_info(),
        "rbm": {"source": source, "num_left": int(params.weights.shape[0]), "num_right": int(params.weights.shape[1])},
        "exact_log_partition": _exact_or_none(params),
        "efforts": effort_study(params, names, args.seed, quick=args.quick),
        "precision": precision_check(quick=args.quick),
    }
    write_result(result, args.output)
    return result


def effort_study(params: rbm.RBMParams, names: list[str], seed: int, *, quick: bool = False) -> list[dict]:
    """Forward and reverse log Z at each named effort (same key), with the move from the first effort's."""
    base = ais.PRESETS["cpu"]
    if quick:
        base = base.replace(num_chains=64, num_betas=100, reverse_start_sweeps=10)
    rows = []
    for name in names:
        changes = dict(EFFORTS[name])
        if quick:
            changes = {k: min(v, 200) if isinstance(v, int) else v for k, v in changes.items()}
        config = base.replace(**changes)
        (forward, reverse), record = measured(
            lambda: reverse_ais.two_sided_log_partition(config, params, jax.random.key(seed))
        )
        row = {
            "effort": name,
            "settings": config.to_dict(),
            "forward": _summary(forward),
            "reverse": _summary(reverse),
            "measured": record,
        }
        if rows:
            row["forward_moved_from_first"] = row["forward"]["estimate"] - rows[0]["forward"]["estimate"]
            row["reverse_moved_from_first"] = row["reverse"]["estimate"] - rows[0]["reverse"]["estimate"]
        log(
            f"log_partition {name}: forward {row['forward']['estimate']:.4f}, reverse {row['reverse']['estimate']:.4f}"
            f" ({record['wall_seconds']:.1f} s)"
        )
        rows.append(row)
    return rows


def precision_check(*, quick: bool = False) -> dict:
    """Default against full float32 matmul precision of the RBM's sampling conditionals (see the docstring)."""
    rng = np.random.default_rng(0)
    num_left, num_right = 16, 64
    params = _random_rbm(rng, num_left, num_right)
    z_left = jnp.asarray(rng.integers(0, 2, (1000, num_left)), jnp.float32)
    z_right = jnp.asarray(rng.integers(0, 2, (1000, num_right)), jnp.float32)

    @jax.jit
    def logit_differences(params, z_left, z_right):
        default_right = jnp.matmul(z_left, params.weights) + params.right_bias[None, :]
        default_left = jnp.matmul(z_right, params.weights.T) + params.left_bias[None, :]
        right = jnp.max(jnp.abs(default_right - rbm.right_field(params, z_left)))
        left = jnp.max(jnp.abs(default_left - rbm.left_field(params, z_right)))
        return right, left

    (right, left), record = measured(lambda: logit_differences(params, z_left, z_right))
    exact = float(rbm.exact_log_partition(params))
    chains, betas = (100, 200) if quick else (1000, 10000)
    estimate = ais.ais_log_partition(params, jax.random.key(0), num_chains=chains, num_betas=betas)
    return {
        "rbm": {"num_left": num_left, "num_right": num_right, "weight_scale": 0.5},
        "backend": jax.default_backend(),
        "max_logit_difference_right": float(right),
        "max_logit_difference_left": float(left),
        "ais_full_precision": {"num_chains": chains, "num_betas": betas, "estimate": float(estimate.log_partition),
                               "exact": exact, "error": float(estimate.log_partition) - exact},
        "measured": record,
    }


def _rbm_of(workdir: str | None, quick: bool) -> tuple[rbm.RBMParams, str]:
    if workdir is None:
        if not quick:
            raise SystemExit("pvpp: give --workdir=RUN (a run with an RBM prior) or --quick")
        return _random_rbm(np.random.default_rng(1), 16, 16), "random 16 + 16 (quick)"
    found = load_model(workdir=workdir)
    prior = make_prior(found.config)
    if prior.normalized:
        raise SystemExit(f"pvpp: the run in {workdir} has no RBM prior ({found.config.prior})")
    return prior.prior_params(found.params), f"{workdir} ({found.source['kind']}, step {found.source['step']})"


def _random_rbm(rng: np.random.Generator, num_left: int, num_right: int) -> rbm.RBMParams:
    """Biases and weights ~ N(0, 0.5^2), drawn from `rng` in that order."""
    return rbm.RBMParams(
        jnp.asarray(rng.normal(0, 0.5, num_left), jnp.float32),
        jnp.asarray(rng.normal(0, 0.5, num_right), jnp.float32),
        jnp.asarray(rng.normal(0, 0.5, (num_left, num_right)), jnp.float32),
    )


def _summary(result) -> dict:
    return {
        "estimate": float(result.log_partition),
        "lower": float(result.log_partition_lower),
        "upper": float(result.log_partition_upper),
        "effective_sample_size": float(result.effective_sample_size),
    }


def _exact_or_none(params: rbm.RBMParams) -> float | None:
    return float(rbm.exact_log_partition(params)) if min(params.weights.shape) <= 20 else None


if __name__ == "__main__":
    main()
