"""Energy distance between sets of images, and the energy-distance order of the PixelVAE++ sample figures.

Energy distance (Szekely & Rizzo). For two sets of images X = {x_i}, Y = {y_j}, flattened and compared with
the Euclidean norm, `energy_distance(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|` with every expectation an
average over all pairs (the V-statistic: pairs (i, i) included). This form is >= 0 and exactly 0 for identical
sets.

Sorting. The PixelVAE++ figures (4 and 7) show rows of decodes of latents sorted by energy distance; the text
of the paper was not available here to check the exact rule, so `sort_by_energy_distance` implements this one:
each row is the set of S decodes of one latent z; the first row is the medoid (the smallest summed energy
distance to all other rows), then each next row is the not-yet-placed row nearest (in energy distance) to the
last placed one, ties to the lower index. Neighbouring rows therefore hold similar distributions of images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def energy_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Energy distance between two sets of samples: a [N, ...], b [M, ...] (same trailing shape) -> scalar.

    2 E|X - Y| - E|X - X'| - E|Y - Y'| with the Euclidean norm of the flattened samples and every expectation
    a mean over all pairs (V-statistic), so the value is >= 0, symmetric, and 0 for identical sets. Units:
    those of the samples (for [-1, 1] images, model-space distance).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim < 1 or b.ndim < 1 or a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"a and b must be [N, ...] and [M, ...] with the same trailing shape, got {a.shape} and {b.shape}"
        )
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError(f"a and b must hold at least one sample each, got {a.shape} and {b.shape}")
    a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    dtype = jnp.result_type(a2.dtype, b2.dtype, jnp.float32)
    a2, b2 = a2.astype(dtype), b2.astype(dtype)
    cross = jnp.mean(pairwise_distances(a2, b2))
    return 2.0 * cross - jnp.mean(pairwise_distances(a2, a2)) - jnp.mean(pairwise_distances(b2, b2))


def energy_distance_matrix(groups: jax.Array) -> jax.Array:
    """Energy distances between every pair of groups: groups [R, S, ...] (R sets of S samples) -> [R, R].

    Symmetric with a zero diagonal; entry (r, q) equals `energy_distance(groups[r], groups[q])`. All R * S
    samples are compared once, so the cost is (R S)^2 distances of flattened samples.
    """
    groups = jnp.asarray(groups)
    if groups.ndim < 3:
        raise ValueError(f"groups must be [R, S, ...] (R sets of S samples, each >= 1-D), got {groups.shape}")
    num_groups, group_size = groups.shape[:2]
    flat = groups.reshape(num_groups * group_size, -1).astype(jnp.result_type(groups.dtype, jnp.float32))
    distances = pairwise_distances(flat, flat).reshape(num_groups, group_size, num_groups, group_size)
    mean_distance = jnp.mean(distances, axis=(1, 3))  # [R, R]: E|X_r - X_q|
    within = jnp.diagonal(mean_distance)
    matrix = 2.0 * mean_distance - within[:, None] - within[None, :]
    # The diagonal is 0 by construction; set it exactly (2m - m - m can round to +-eps).
    return jnp.where(jnp.eye(num_groups, dtype=bool), 0.0, matrix)


def sort_by_energy_distance(groups: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Orders rows of decodes so that neighbouring rows are close in energy distance.

    groups [R, S, ...]: row r holds S decodes of latent z_r (e.g. [R, S, H, W, C] images). Returns
    (groups[order], order) with order [R] a permutation: order[0] is the medoid row (smallest summed energy
    distance to all others, ties to the lower index); each next row is the unplaced row nearest to the
    previous one. See the module notes for why this rule.
    """
    matrix = np.asarray(energy_distance_matrix(groups))
    order = greedy_chain_order(matrix)
    return np.asarray(groups)[order], order


def greedy_chain_order(distance_matrix: np.ndarray) -> np.ndarray:
    """Greedy nearest-neighbour chain over a symmetric [R, R] distance matrix -> permutation [R] (int).

    Starts at the row with the smallest row sum; then repeatedly appends the nearest unvisited row to the last
    one. Ties go to the lower index.
    """
    matrix = np.asarray(distance_matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"distance_matrix must be a non-empty square [R, R] matrix, got {matrix.shape}")
    num = matrix.shape[0]
    order = [int(np.argmin(matrix.sum(axis=1)))]
    unvisited = np.ones(num, dtype=bool)
    unvisited[order[0]] = False
    while unvisited.any():
        candidates = np.where(unvisited, matrix[order[-1]], np.inf)
        nxt = int(np.argmin(candidates))
        order.append(nxt)
        unvisited[nxt] = False
    return np.asarray(order, dtype=np.int64)


def pairwise_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """Euclidean distances between rows: a [N, D], b [M, D] -> [N, M].

    Computed from the differences themselves, one row of a at a time (memory M * D), not via
    |a|^2 + |b|^2 - 2 a.b, whose cancellation leaves ~sqrt(D * eps) instead of 0 for equal images.
    """
    return jax.lax.map(lambda row: jnp.sqrt(jnp.sum(jnp.square(row[None, :] - b), axis=-1)), a)
