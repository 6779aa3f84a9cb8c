"""Train PixelVAE++ on MNIST, dynamically binarized (--dataset=mnist, the default) or statically
(--dataset=binarized_mnist).

    python -m pvpp.experiments.mnist --flagfile=experiments/mnist_dynamic.flags --workdir=/tmp/pvpp_mnist
"""

from pvpp.experiments import common
from pvpp.model import mnist_config

DATASETS = ("mnist", "binarized_mnist")
MODEL_DEFAULTS = mnist_config()

if __name__ == "__main__":
    common.launch(DATASETS, MODEL_DEFAULTS)
