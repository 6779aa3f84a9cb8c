"""Reverse AIS: with exact start states an upper bound on log Z in expectation, forward AIS a lower one; both
converge to the exact value as the temperatures grow. With approximate start states: what it does and does not
guarantee. Every sampling matmul of the RBM runs at full precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pvpp.priors import ais, rbm, reverse_ais
from pvpp.relax import bernoulli_sample

from helpers import exact_log_partition, planted_rbm, random_rbm

# Many independent small runs ("seeds"): each has CHAINS chains; the mean over runs of each estimate is compared
# with the exact value, with a margin of a few standard errors of that mean.
RUNS, CHAINS = 48, 8


def _forward_and_reverse(params, num_betas, seed=0, start="exact", start_sweeps=0):
    """[RUNS] forward estimates and [RUNS] reverse estimates of log Z (independent keys per run)."""
    forward, backward = [], []
    for run in range(RUNS):
        key = jax.random.fold_in(jax.random.key(seed), run)
        config = ais.AISConfig(
            num_chains=CHAINS, num_betas=num_betas, reverse_start=start, reverse_start_sweeps=start_sweeps
        )
        f, r = reverse_ais.two_sided_log_partition(config, params, key)
        forward.append(float(f.log_partition))
        backward.append(float(r.log_partition))
    return np.array(forward), np.array(backward)


def _mean_and_error(values):
    return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))


@pytest.mark.parametrize(
    "name, params",
    [
        ("random 12 + 40", random_rbm(3, 12, 40, 0.5)),
        ("random 40 + 10 (small side on the right)", random_rbm(4, 40, 10, 0.5)),
        ("planted 14 + 30, four modes", planted_rbm(5, 14, 30, 2, 0.08)[0]),
    ],
)
def test_forward_is_low_and_reverse_is_high_in_expectation_and_both_converge(name, params):
    """Exact start states drawn by enumeration: mean forward <= exact <= mean reverse (beyond noise) at few
    temperatures, and both gaps shrink as the number of temperatures grows."""
    exact = exact_log_partition(params)
    gaps = []
    for num_betas in (5, 50, 500):
        forward, backward = _forward_and_reverse(params, num_betas)
        forward_mean, forward_error = _mean_and_error(forward)
        reverse_mean, reverse_error = _mean_and_error(backward)
        assert forward_mean <= exact + 3 * forward_error, (name, num_betas, forward_mean, exact)
        assert reverse_mean >= exact - 3 * reverse_error, (name, num_betas, reverse_mean, exact)
        gaps.append((exact - forward_mean, reverse_mean - exact))
    (forward_few, reverse_few), _, (forward_many, reverse_many) = gaps
    assert forward_few > 0.05 and reverse_few > 0.05, gaps  # the bias is visible with 5 temperatures
    assert abs(forward_many) < 0.25 * forward_few and abs(reverse_many) < 0.25 * reverse_few, gaps
    assert abs(forward_many) < 0.05 and abs(reverse_many) < 0.05, gaps


def test_exact_left_samples_follow_the_marginal():
    """Exact samples of the left side: their empirical distribution matches exp(-F(zL)) / Z (chi-square-like check
    on a 4 + 6 RBM, both when the left side and when the right side is the enumerated one)."""
    for params in (random_rbm(7, 4, 6, 0.8), random_rbm(8, 6, 3, 0.8)):
        num_left = params.weights.shape[0]
        samples = np.asarray(reverse_ais.exact_left_samples(params, jax.random.key(0), 40000))
        index = samples @ (2 ** np.arange(num_left))
        counts = np.bincount(index.astype(int), minlength=2**num_left) / len(index)
        states = ((np.arange(2**num_left)[:, None] >> np.arange(num_left)) & 1).astype(np.float32)
        log_marginal = -np.asarray(rbm.free_energy_left(params, jnp.asarray(states)))
        probabilities = np.exp(log_marginal - np.logaddexp.reduce(log_marginal))
        assert np.max(np.abs(counts - probabilities)) < 4 * np.sqrt(probabilities.max() / len(index)) + 1e-3


def test_approximate_start_states_from_well_mixed_chains_stay_above():
    """On a random RBM whose Gibbs chains mix, start states from long chains ('gibbs') or from forward AIS's final
    states ('forward_ais') behave like exact ones: the mean reverse estimate is above exact log Z and close."""
    params = random_rbm(3, 12, 40, 0.5)
    exact = exact_log_partition(params)
    for start in ("gibbs", "forward_ais"):
        _, backward = _forward_and_reverse(params, 50, start=start, start_sweeps=200)
        mean, error = _mean_and_error(backward)
        assert exact - 3 * error <= mean <= exact + 0.5, (start, mean, exact)


def test_start_states_that_are_not_target_samples_lose_the_upper_bound():
    """What approximate start states do not guarantee. Given a start state x, the reverse weight has mean
    Z_0 q(x) / f_1(x), with q the law of forward AIS's final state; averaged over exact samples of the target this
    is Z_0 / Z, but start states from regions that forward AIS over-visits (e.g. uniformly random states: chains
    that never ran) give estimates below exact log Z. Reverse AIS bounds log Z from above only when its start
    states are samples of the target."""
    params = random_rbm(3, 12, 40, 1.0)
    exact = exact_log_partition(params)
    uniform = bernoulli_sample(jax.random.key(9), jnp.zeros((256, 12)))
    for num_betas in (5, 50):
        result = reverse_ais.reverse_ais_log_partition(params, jax.random.key(2), uniform, num_betas=num_betas)
        assert float(result.log_partition) < exact - 0.3, (num_betas, float(result.log_partition), exact)


def test_every_sampling_matmul_runs_at_full_precision():
    """The precision that makes the transitions exact on TF32 GPUs, checked in the traced programs on CPU: every
    dot_general of block Gibbs, forward AIS and reverse AIS asks for HIGHEST."""
    params = random_rbm(0, 6, 5, 0.5)
    programs = {
        "gibbs": lambda p, k: rbm.sample(p, k, 3, 2),
        "advance": lambda p, k: rbm.advance_chains(p, k, rbm.init_chains(p, k, 3), 2),
        "forward": lambda p, k: ais.ais_log_partition(p, k, num_chains=3, num_betas=4),
        "reverse": lambda p, k: reverse_ais.reverse_ais_log_partition(
            p, k, jnp.zeros((3, 6)), num_betas=4, sweeps_per_beta=2
        ),
        "exact starts": lambda p, k: reverse_ais.exact_left_samples(p, k, 3),
    }
    for name, program in programs.items():
        jaxpr = jax.make_jaxpr(program)(params, jax.random.key(0))
        precisions = list(_dot_precisions(jaxpr.jaxpr))
        assert precisions, name
        assert all(p == (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST) for p in precisions), (name, precisions)


def _dot_precisions(jaxpr):
    for equation in jaxpr.eqns:
        if equation.primitive.name == "dot_general":
            precision = equation.params["precision"]
            yield precision if isinstance(precision, tuple) else (precision, precision)
        for value in equation.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if hasattr(sub, "jaxpr"):
                    yield from _dot_precisions(sub.jaxpr if hasattr(sub.jaxpr, "eqns") else sub)
                elif hasattr(sub, "eqns"):
                    yield from _dot_precisions(sub)


def test_bad_input_is_refused_with_its_name():
    params = random_rbm(0, 6, 5, 0.5)
    with pytest.raises(ValueError, match="start_left"):
        reverse_ais.reverse_ais_log_partition(params, jax.random.key(0), jnp.zeros((3, 5)), num_betas=4)
    with pytest.raises(ValueError, match="reverse_start"):
        ais.AISConfig(reverse_start="sideways")
    with pytest.raises(ValueError, match="forward AIS"):
        reverse_ais.start_states(params, jax.random.key(0), "forward_ais", 3, start_sweeps=0)
    with pytest.raises(ValueError, match="smaller side"):
        reverse_ais.exact_left_samples(random_rbm(0, 30, 30, 0.1), jax.random.key(0), 3)
