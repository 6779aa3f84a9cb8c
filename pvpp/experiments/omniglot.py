"""Train PixelVAE++ on Omniglot (dynamically binarized; --data_variant picks the 28x28 source).

python -m pvpp.experiments.omniglot --flagfile=experiments/omniglot.flags --workdir=/tmp/pvpp_omniglot
"""

from pvpp.experiments import common
from pvpp.model import omniglot_config

DATASETS = ("omniglot",)
MODEL_DEFAULTS = omniglot_config()

if __name__ == "__main__":
    common.launch(DATASETS, MODEL_DEFAULTS)
