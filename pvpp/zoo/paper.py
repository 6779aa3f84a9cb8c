"""The paper's numbers, shown beside an entry's own (Sadeghi et al. 2019, PixelVAE++, Table 1): test-set
log-likelihood in nats per image. Only the cells this table states are filled; every other (data set, prior)
is None rather than a guess."""

from __future__ import annotations

from typing import Any

SOURCE = "Sadeghi, Andriyash, Vinci, Buffoni, Amin (2019), PixelVAE++, Table 1: test log-likelihood"
LABEL = "the paper's reported number for this data set and prior (its full-size model), not a result of these weights"

#: (pvpp data set, ModelConfig.prior) -> test LL, nats per image.
TABLE_1_NATS = {
    ("binarized_mnist", "rbm"): -78.65,
    ("binarized_mnist", "gaussian"): -78.66,
    ("caltech101_silhouettes", "rbm"): -77.46,
    ("caltech101_silhouettes", "gaussian"): -79.52,
}


def paper_section(dataset: str, prior_name: str, units: str) -> dict[str, Any]:
    """The card's 'paper' section: {'test_log_likelihood', 'units', 'source', 'label'} (None where unknown)."""
    value = TABLE_1_NATS.get((dataset, prior_name)) if units == "nats" else None
    return {"test_log_likelihood": value, "units": units, "source": SOURCE, "label": LABEL}
