"""Evaluation: how good a trained model is, in nats. Imports nothing from `pvpp.training`.

    evaluate.py         the test log-likelihood of a split: importance-weighted bound (k samples) with log Z by
                        AIS (forward and reverse) for the RBM, the result files (EvalConfig, evaluate)
    iwae_pass.py        the compiled per-image importance-sampling pass, over the local devices
"""
