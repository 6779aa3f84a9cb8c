"""Train PixelVAE++ on CIFAR-10 (32x32 RGB, discretized logistic mixture; results in bits per dimension).

python -m pvpp.experiments.cifar10 --flagfile=experiments/cifar10.flags --workdir=/tmp/pvpp_cifar10
"""

from pvpp.experiments import common
from pvpp.model import cifar10_config

DATASETS = ("cifar10",)
MODEL_DEFAULTS = cifar10_config()

if __name__ == "__main__":
    common.launch(DATASETS, MODEL_DEFAULTS)
