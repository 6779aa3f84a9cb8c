"""pvpp: PixelVAE++ (Sadeghi et al. 2019) in JAX / Flax Linen.

    m = pvpp.load("runs/caltech101_rbm")   # a trained run or an export: see pvpp.inference
    m = pvpp.load("zoo:caltech101-rbm-cpubudget")   # a model shipped with pvpp: see pvpp.zoo
"""

import importlib

__version__ = "0.2.0"

__all__ = ["load"]


def __getattr__(name: str):
    """`pvpp.load` (`pvpp.inference.load`), imported on first use: `import pvpp.data` and the other light
    submodules stay free of jax, flax and orbax until a model is loaded."""
    if name == "load":
        return importlib.import_module("pvpp.inference").load
    raise AttributeError(f"module 'pvpp' has no attribute {name!r}")
