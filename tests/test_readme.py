"""The README's notebook section runs as written, and its results are what it says they are."""

import pathlib
import re

import jax.numpy as jnp
import numpy as np

import pvpp.zoo

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _notebook_code() -> str:
    text = README.read_text()
    section = re.search(r"<!-- notebook:start -->(.*?)<!-- notebook:end -->", text, re.S)
    assert section, "README.md lost its notebook section markers"
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), re.S)
    assert blocks, "the notebook section has no python block"
    return "\n".join(blocks)


def test_notebook_section_runs_and_gives_sane_results(capsys):
    namespace: dict = {}
    exec(compile(_notebook_code(), str(README), "exec"), namespace)
    config = namespace["config"]
    assert namespace["logits"].shape == (4, config.num_latents)
    assert namespace["pixel_logits"].shape == (4, 8, 8, 1)
    z_left, z_right = namespace["z_left"], namespace["z_right"]
    assert z_left.shape == (5, 8) and z_right.shape == (5, 8)
    assert set(np.unique(np.asarray(z_left))) <= {0.0, 1.0}
    # AIS agrees with the exact log Z of this small RBM, and the likelihood is a finite negative number of nats.
    assert abs(float(namespace["estimate"].log_partition) - float(namespace["log_z"])) < 0.05
    ll = namespace["result"]["log_likelihood"]
    assert ll.shape == (4,) and bool(jnp.all(jnp.isfinite(ll))) and bool(jnp.all(ll < 0))
    assert namespace["z_prior"].shape == (5, 16)
    # The loaded export gives the same likelihoods as the pure functions on the same parameters (other noise).
    loaded_ll = np.asarray(namespace["ll"])
    assert loaded_ll.shape == (4,) and np.all(np.isfinite(loaded_ll))
    np.testing.assert_allclose(loaded_ll, np.asarray(ll), atol=5.0)
    assert "[" in capsys.readouterr().out


def test_results_table_is_the_one_the_zoo_cards_give():
    """The README's results table is `python -m pvpp.zoo list --markdown` of the shipped entries: the numbers a
    reader sees are the numbers the shipped weights' cards record."""
    section = re.search(r"<!-- zoo:start -->\n(.*?)<!-- zoo:end -->", README.read_text(), re.S)
    assert section, "README.md lost its zoo table markers"
    shipped = pvpp.zoo.Cards(card for card in pvpp.zoo.list() if card_is_shipped(card))
    assert section.group(1).strip() == shipped.markdown().strip(), "regenerate: python -m pvpp.zoo list --markdown"


def card_is_shipped(card) -> bool:
    return pvpp.zoo.where(card["identity"]["resolved_name"]).shipped
