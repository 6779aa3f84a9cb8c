"""Train PixelVAE++ on Caltech-101 silhouettes (28x28, statically binary; one decoder resolution).

python -m pvpp.experiments.caltech101 --flagfile=experiments/caltech101_cpu.flags --workdir=/tmp/pvpp_caltech
"""

from pvpp.experiments import common
from pvpp.model import caltech101_config

DATASETS = ("caltech101_silhouettes",)
MODEL_DEFAULTS = caltech101_config()

if __name__ == "__main__":
    common.launch(DATASETS, MODEL_DEFAULTS)
