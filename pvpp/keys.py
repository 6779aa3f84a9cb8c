"""pvpp's one key-stream convention, for training, evaluation and generation alike.

One root key per run or command, `jax.random.key(seed)`. Each use of randomness draws from a named stream,
`stream(root, name) = fold_in(root, STREAMS.index(name))`, and inside a stream the indices that place a draw
are folded in, outermost first:

    training     fold_in(fold_in(stream(root, "latent"), step), global example index)   latent noise
                 fold_in(fold_in(stream(root, "dropout"), step), device index)         dropout masks
                 fold_in(stream(root, "negative_phase"), step)                          RBM chains / AIS samples
    evaluation   fold_in(stream(root, "importance_samples"), index of the image in its split)
    generation   fold_in(stream(root, "prior_decode"), decode batch), then fold_in(., pixel) per pixel

So a resumed run draws exactly the randomness of an uninterrupted one, 8 devices and 1 device draw the same
latent noise, and an image's evaluation does not depend on the batch it was evaluated in. `STREAMS` is part of
the format of every result: append new names, never reorder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

STREAMS = (
    "init",  # parameter init, its latent noise, the initial persistent chains
    "latent",  # relaxed latent samples of training steps
    "dropout",  # dropout masks of training steps
    "negative_phase",  # the prior's negative phase (persistent chains advanced, or fresh AIS samples)
    "log_partition",  # AIS estimates of log Z (periodic evaluation in training; the evaluation command)
    "eval_noise",  # latent samples of the periodic evaluation in training
    "importance_samples",  # the evaluation command's hard latent samples
    "prior_latents",  # generation: latents from the prior
    "prior_decode",  # generation: decoding prior latents
    "posterior_latents",  # generation: latents from q(z | x) for reconstructions
    "reconstruction_decode",  # generation: decoding those
    "eval_grids",  # the sample / reconstruction grids of the periodic evaluation in training (then per step)
)


def stream(root: jax.Array, name: str) -> jax.Array:
    """The key of the named stream (a name of `STREAMS`) of the root key `root`."""
    if name not in STREAMS:
        raise ValueError(f"key stream must be one of {STREAMS}, got {name!r}")
    return jax.random.fold_in(root, STREAMS.index(name))


def stream_index(name: str) -> int:
    """The number of a stream (for NumPy generators seeded from the same convention)."""
    if name not in STREAMS:
        raise ValueError(f"key stream must be one of {STREAMS}, got {name!r}")
    return STREAMS.index(name)


def fold_in_each(key: jax.Array, indices: jax.Array) -> jax.Array:
    """[N] keys, entry n = fold_in(key, indices[n]) (one key per example, pixel or chain)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(indices))
