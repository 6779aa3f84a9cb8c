"""Training entry points, one per data set (absl programs; the only place in pvpp that reads flags):

    python -m pvpp.experiments.mnist       (--dataset=mnist | binarized_mnist)
    python -m pvpp.experiments.omniglot
    python -m pvpp.experiments.caltech101
    python -m pvpp.experiments.cifar10

Shared flags and the flags -> configs function: `pvpp.experiments.common`. Flag files: experiments/*.flags.
"""
