"""pvpp: PixelVAE++ (Sadeghi et al. 2019) in JAX / Flax Linen."""

__version__ = "0.2.0"
