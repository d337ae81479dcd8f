from dataclasses import dataclass, field
from typing import Any

import pytest
from omegaconf import OmegaConf

from cascade.config import load_config, save_config
from cascade.errors import ConfigError
from cascade.evaluation.run import EvalConfig
from cascade.registry import Registry


@dataclass
class Opt:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Schema:
    data: list[str] = field(default_factory=lambda: ["set5"])
    scales: list[float] = field(default_factory=lambda: [2.0])
    train: Opt = field(default_factory=Opt)
    settings: dict[str, Any] = field(default_factory=dict)


def test_defaults_yaml_and_overrides_merge_in_order(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  lr: 0.5\n  steps: 3\n")
    cfg = load_config(Schema, y, ["train.steps=7"], extra={"data": ["a"]})
    assert cfg.train.lr == 0.5 and cfg.train.steps == 7 and cfg.data == ["a"]


def test_comma_lists_on_the_command_line():
    cfg = load_config(Schema, overrides=["data=set5,set14", "scales=2,3.5"])
    assert list(cfg.data) == ["set5", "set14"]
    assert list(cfg.scales) == [2.0, 3.5]


def test_unknown_key_names_the_nearest_valid_one():
    with pytest.raises(ConfigError, match=r"'train\.lrr'.*did you mean 'train\.lr'"):
        load_config(Schema, overrides=["train.lrr=1"])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("sclaes: [2]\n")
    with pytest.raises(ConfigError, match=r"'sclaes' in .*bad\.yaml.*did you mean 'scales'"):
        load_config(Schema, y)


def test_wrong_type_is_a_config_error():
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(Schema, overrides=["train.steps=abc"])


def test_free_form_dict_accepts_any_key():
    cfg = load_config(Schema, overrides=["settings.lainr.checkpoint=ck"])
    assert cfg.settings.lainr.checkpoint == "ck"


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Schema, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Schema, overrides=["train.lr"])


def test_round_trip_through_saved_yaml(tmp_path):
    cfg = load_config(EvalConfig, overrides=["data=set14", "scales=2.5", "settings.lainr.chunk=4"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(EvalConfig, tmp_path / "config.yaml")
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)


def test_registry_duplicates_fail_and_unknown_suggests():
    reg = Registry("thing")
    reg.register("alpha")(dict)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("alpha")(dict)
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        reg.get("alpah")
    assert reg.make({"name": "alpha", "args": {"a": 1}}) == {"a": 1}
    assert reg.make("alpha", b=2) == {"b": 2}
