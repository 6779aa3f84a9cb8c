"""Each setting declared once: the flags of the commands are derived from the config dataclasses' fields
(`pvpp.settings.setting`, `pvpp.experiments.config_flags`), so a new field with its help reaches the flags and
config.json with no other edit."""

from __future__ import annotations

import dataclasses
import json

import pytest
from absl import flags

from pvpp.evaluation.evaluate import EvalConfig
from pvpp.experiments import common, config_flags, mnist, omniglot, processes
from pvpp.experiments import evaluate as evaluate_command
from pvpp.experiments import sample as sample_command
from pvpp.generation.sample import SampleConfig
from pvpp.model import ModelConfig
from pvpp.settings import setting
from pvpp.training.config import DataConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class Inner:
    width: int = setting(3, "width of a thing", minimum=1)
    undescribed: float = 0.5  # no help: no flag


@dataclasses.dataclass(frozen=True)
class Outer:
    rate: float = setting(0.1, "a rate", flag="legacy_rate")
    mode: str = setting("a", "a mode", choices=("a", "b"))
    count: int | None = setting(None, "a count (default: none)", minimum=0)
    on: bool = setting(True, "a switch")
    inner: Inner = setting(Inner(), "of the inner part", prefix="inner_")
    picked: Inner = setting(Inner(width=5), "of the picked part", subflags={"width": "picked_width"})

    def __post_init__(self):
        if self.count is not None and self.count > 100:
            raise ValueError(f"count must be <= 100, got {self.count}")


def _parse(cls, argv, defaults=None):
    specs = config_flags.flag_specs(cls, defaults)
    flag_values = flags.FlagValues()
    config_flags.define(specs, flag_values)
    flag_values(["prog", *argv])
    return specs, flag_values


def test_the_flags_carry_the_fields_names_defaults_help_types_bounds_and_choices():
    specs, flag_values = _parse(Outer, [])
    assert [s.name for s in specs] == ["legacy_rate", "mode", "count", "on", "inner_width", "picked_width"]
    assert [s.path for s in specs] == [("rate",), ("mode",), ("count",), ("on",), ("inner", "width"), ("picked", "width")]
    assert flag_values["legacy_rate"].help == "a rate" and flag_values["legacy_rate"].default == 0.1
    assert flag_values["inner_width"].help == "width of a thing of the inner part"
    assert flag_values["picked_width"].default == 5 and flag_values["count"].default is None
    assert flag_values["on"].default is True and flag_values["mode"].parser.enum_values == ["a", "b"]
    assert config_flags.build(Outer, config_flags.flag_values_by_path(specs, flag_values)) == Outer()
    with pytest.raises(flags.IllegalFlagValueError, match="--inner_width"):
        _parse(Outer, ["--inner_width=0"])
    with pytest.raises(flags.IllegalFlagValueError, match="--mode"):
        _parse(Outer, ["--mode=c"])


def test_flag_values_build_the_config_and_its_post_init_validates():
    argv = ["--legacy_rate=0.5", "--mode=b", "--count=7", "--noon", "--inner_width=9", "--picked_width=2"]
    specs, flag_values = _parse(Outer, argv)
    config = config_flags.build(Outer, config_flags.flag_values_by_path(specs, flag_values))
    assert config == Outer(rate=0.5, mode="b", count=7, on=False, inner=Inner(width=9), picked=Inner(width=2))
    specs, flag_values = _parse(Outer, ["--count=101"])
    with pytest.raises(ValueError, match="count must be <= 100"):
        config_flags.build(Outer, config_flags.flag_values_by_path(specs, flag_values))


def test_a_new_field_with_its_help_reaches_the_flags_and_config_json_with_no_other_edit():
    """A field added to the real TrainConfig (here in a subclass) is a training flag and a config.json entry."""
    extended = dataclasses.make_dataclass(
        "ExtendedTrainConfig",
        [("warmup_images", int, setting(64, "images of a new warm-up", minimum=0))],
        bases=(TrainConfig,),
        frozen=True,
    )
    specs, flag_values = _parse(extended, ["--warmup_images=5", "--lr_decay=0.9"])
    assert flag_values["warmup_images"].help == "images of a new warm-up"
    config = config_flags.build(extended, config_flags.flag_values_by_path(specs, flag_values))
    recorded = json.loads(json.dumps(config.to_dict()))  # what config.json holds of the training settings
    assert recorded["warmup_images"] == 5 and recorded["optim"]["lr_decay_per_step"] == 0.9
    assert {s.name for s in specs} == {s.name for s in config_flags.flag_specs(TrainConfig)} | {"warmup_images"}


def test_every_setting_flag_of_the_commands_is_derived_from_a_config_field():
    # Training: everything but the start-up flags, the run's directory and the resume switch.
    flag_values = flags.FlagValues()
    common.define_flags(omniglot.DATASETS, omniglot.MODEL_DEFAULTS, flag_values)
    start_up = flags.FlagValues()
    processes.define_flags(start_up)
    derived = {
        spec.name: spec
        for cls, defaults in ((TrainConfig, None), (DataConfig, None), (ModelConfig, omniglot.MODEL_DEFAULTS))
        for spec in config_flags.flag_specs(cls, defaults)
    }
    assert set(flag_values) - set(start_up) - {"workdir", "allow_changed_settings"} == set(derived)
    for name, spec in derived.items():
        if name not in ("dataset", "data_dir"):  # the entry point's data sets and env PVPP_DATA_DIR give these
            assert flag_values[name].default == spec.default, name
        assert spec.help in flag_values[name].help, name  # an enum's help starts with its choices
    assert set(common.SETTING_FLAGS.values()) == set(derived) | {"num_devices"}
    # A data set without variants has no --data_variant.
    mnist_flags = flags.FlagValues()
    common.define_flags(mnist.DATASETS, mnist.MODEL_DEFAULTS, mnist_flags)
    assert "data_variant" not in mnist_flags and "data_variant" in flag_values
    # Evaluation and sampling: every field of their configs has its flag.
    for cls, command in ((EvalConfig, evaluate_command), (SampleConfig, sample_command)):
        names = {spec.name for spec in config_flags.flag_specs(cls)}
        assert names <= set(command.FLAGS), cls.__name__
    assert {f.name for f in dataclasses.fields(SampleConfig)} <= set(sample_command.FLAGS)
