"""The model: PixelVAE++ (its config, the encoders, the latent maps) over a PixelCNN++ decoder.

    pixelvae.py     ModelConfig, PixelVAEPP, the paper's per-data-set configurations, to_model_space
    pixelcnn.py     the PixelCNN++ decoder (down and up paths of shifted convolutions)
    likelihoods.py  p(x | decoder output): Bernoulli for binary images, the discretized logistic mixture for RGB
    objectives.py   the per-image ELBO pieces and importance weights shared by training and evaluation

The layers themselves are in `pvpp.nn`, the priors in `pvpp.priors`.
"""

from pvpp.model.pixelvae import (
    LIKELIHOODS,
    PRIORS,
    ModelConfig,
    ModelOutput,
    PixelVAEPP,
    caltech101_config,
    cifar10_config,
    count_params,
    mnist_config,
    omniglot_config,
    rbm_params,
    to_model_space,
)

__all__ = [
    "LIKELIHOODS", "PRIORS", "ModelConfig", "ModelOutput", "PixelVAEPP", "caltech101_config", "cifar10_config",
    "count_params", "mnist_config", "omniglot_config", "rbm_params", "to_model_space",
]
