"""Tiny PixelVAE++ models trained for a few hundred CPU steps on real Caltech-101 silhouettes through the production
train step (`pvpp.train.step_functions`: the pmapped `train_step` with pvpp's optimizer, KL warm-up and the prior's
negative phase): the loss falls for every prior, the latents are used (KL > 0) for every prior that has them, and on
the RBM model the IWAE bound rises with k above the ELBO."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pvpp import data, train
from pvpp.model import ModelConfig, PixelVAEPP, objectives, to_model_space
from pvpp.priors import make_prior
from pvpp.training.optim import OptimConfig

NUM_STEPS = 240
BATCH = 8


def _config(prior):
    return ModelConfig(
        image_shape=(28, 28, 1),
        nr_resnet=1,
        nr_filters=8,
        num_concat_latents=32,
        prior=prior,
        rbm_num_left=16,
        encoder_filters=8,
        dropout_rate=0.0,
        rbm_init_scale=0.01,
    )


# Adam (0.95, 0.9995) at 2e-3 without decay, KL annealed from 0 over the first 90% of the steps (the paper's
# warm-up), the RBM's negative phase from 64 persistent chains with one sweep per step.
TRAIN = train.TrainConfig(
    batch_size=BATCH,
    num_steps=NUM_STEPS,
    num_devices=1,
    eval_grids=0,  # no sample grids: this test is about learning (test_train checks the grids)
    init_batch_size=32,
    num_chains=64,
    sweeps_per_step=1,
    optim=OptimConfig(
        learning_rate=2e-3,
        lr_decay_per_step=1.0,
        adam_b1=0.95,
        adam_b2=0.9995,
        kl_warmup_steps=int(0.9 * NUM_STEPS),
        kl_start=0.0,
    ),
)


@functools.lru_cache(maxsize=None)
def _caltech(data_dir):
    train_images = data.load("caltech101_silhouettes", "train", data_dir=data_dir).images[:256]
    test_images = data.load("caltech101_silhouettes", "test", data_dir=data_dir).images[:16]
    return train_images, test_images


@functools.lru_cache(maxsize=None)
def _train(prior, data_dir):
    """NUM_STEPS production steps on 256 training images: (model, variables, per-step metrics)."""
    config = _config(prior)
    images, _ = _caltech(data_dir)
    devices = tuple(jax.local_devices()[:1])
    fns = train.step_functions(config, TRAIN, devices)
    sharding = train.device_sharding(devices)
    state = train.replicate(fns.init(jax.random.key(0), images[:32]), sharding)
    order = np.random.default_rng(0).permutation(np.arange(NUM_STEPS * BATCH) % 256)
    history = []
    for i in range(NUM_STEPS):
        batch = jax.device_put(images[order[i * BATCH : (i + 1) * BATCH]][None], sharding)
        state, metrics = fns.train(state, batch)
        history.append(metrics)
    assert fns.traces()["train"] == 1  # one compilation for the whole run
    history = jax.tree.map(lambda *v: np.asarray(v)[:, 0], *history)
    return PixelVAEPP(config), {"params": train.unreplicate(state.params)}, history


def _held_out(model, variables, data_dir, num_samples):
    _, test = _caltech(data_dir)
    x = to_model_space(model.config, jnp.asarray(test))
    prior = make_prior(model.config)
    log_z = prior.log_partition(prior.prior_params(variables["params"]), jax.random.key(0), method="exact")
    fn = jax.jit(
        lambda v, x, key: objectives.iwae_log_likelihood(
            model,
            v,
            x,
            key,
            num_samples=num_samples,
            chunk_size=min(num_samples, 10),
            log_partition=None if log_z is None else log_z.estimate,
        )
    )
    return fn(variables, x, jax.random.key(9))


@pytest.mark.slow  # four trainings of a few hundred steps
@pytest.mark.parametrize("prior", ["rbm", "gaussian", "bernoulli", "none"])
def test_loss_falls_and_latents_are_used(prior, data_dir):
    model, variables, history = _train(prior, str(data_dir))
    # With annealing the loss itself is not comparable across steps; the reconstruction term is, and at the end
    # (beta_kl = 1) the loss is the negative relaxed ELBO.
    first, last = history["reconstruction"][:20].mean(), history["reconstruction"][-40:].mean()
    assert np.all(history["finite"]) and np.all(np.isfinite(history["loss"]))
    assert last < first - 0.15 * abs(first), (first, last)
    held_out = _held_out(model, variables, data_dir, num_samples=10)
    kl = float(
        jnp.mean(held_out["kl"])
    )  # E_q[log q(z|x) - log p(z)] with hard samples (exact log Z for the RBM)
    if prior == "none":
        assert kl == 0.0  # no latents: the log-likelihood is exact
    else:
        assert kl > 1.0, f"posterior collapse: KL = {kl:.3f} nats"


# The RBM training it shares with test_loss_falls_and_latents_are_used; the quick tier checks the same estimator
# against the enumerated exact likelihood of a tiny model (test_evaluate.py).
@pytest.mark.slow
def test_iwae_bound_rises_with_k_above_the_elbo(data_dir):
    model, variables, _ = _train("rbm", str(data_dir))
    result = _held_out(model, variables, data_dir, num_samples=100)
    log_w = np.asarray(result["log_weights"], np.float64)  # [100, B] with the exact log Z
    np.testing.assert_allclose(result["elbo"], log_w.mean(0), rtol=1e-5)

    def iwae(k):
        # Average the k-sample bound over the 100 // k disjoint groups of samples (an unbiased estimate of it).
        groups = log_w.reshape(100 // k, k, -1)
        m = groups.max(1, keepdims=True)
        return np.mean(np.log(np.mean(np.exp(groups - m), axis=1)) + m[:, 0])

    bounds = [iwae(k) for k in (1, 10, 100)]
    assert bounds[0] == pytest.approx(float(np.mean(result["elbo"])), rel=1e-5)  # k = 1 is the ELBO
    assert bounds[0] < bounds[1] < bounds[2], bounds
    np.testing.assert_allclose(float(np.mean(result["log_likelihood"])), bounds[2], rtol=1e-5)
