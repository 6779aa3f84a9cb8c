"""Dynamic binarization: a fresh Bernoulli(x / 255) image each time an image is used, from explicit seeds.

The sample of image `example_id` in epoch `epoch` is a function of (seed, epoch, example_id) only, so it does
not depend on the batch size, the device count or the position of the image in its batch, and a resumed run
draws the same samples as an uninterrupted one. Each image gets its own numpy Philox generator seeded with
`SeedSequence(seed, spawn_key=(BINARIZE_STREAM, epoch, example_id))`; the shuffling of the iterator uses
another stream.
"""

import numpy as np

from pvpp.validation import check_int

SHUFFLE_STREAM = 0  # first spawn-key entry of the iterator's per-epoch permutation
BINARIZE_STREAM = 1  # first spawn-key entry of the per-image binarization generators


def binarize_dynamically(images: np.ndarray, example_ids: np.ndarray, *, seed: int, epoch: int) -> np.ndarray:
    """Draws pixel ~ Bernoulli(x / 255) independently for every pixel.

    Args:
      images: uint8 [B, ...] grey levels 0..255.
      example_ids: int [B], the index of each image in its split (its identity for the random stream).
      seed, epoch: non-negative ints.

    Returns:
      uint8 {0, 1} [B, ...]. x = 0 always gives 0 and x = 255 always gives 1.
    """
    images = np.asarray(images)
    example_ids = np.asarray(example_ids)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 grey levels 0..255, got dtype {images.dtype}")
    if example_ids.shape != images.shape[:1]:
        raise ValueError(f"example_ids must have shape [B] = {images.shape[:1]}, got {example_ids.shape}")
    check_int(seed, "seed", 0)
    check_int(epoch, "epoch", 0)
    out = np.empty(images.shape, np.uint8)
    for row, example_id in enumerate(example_ids.tolist()):
        generator = np.random.Generator(
            np.random.Philox(
                np.random.SeedSequence(int(seed), spawn_key=(BINARIZE_STREAM, int(epoch), example_id))
            )
        )
        # float64 uniforms in [0, 1): P(u < x / 255) = x / 255 up to 2**-53.
        out[row] = generator.random(images.shape[1:]) < images[row] / 255.0
    return out
