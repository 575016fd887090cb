"""Config validation: unknown keys, wrong types and impossible values fail by name."""

import pytest

from agejax.train import config_rules
from agejax.errors import ConfigError
from configs import tiny


def _cfg():
  return tiny.get_config()


def test_shipped_tiny_config_is_valid():
  assert config_rules.validate(_cfg()) is not None


def test_unknown_key_is_named_with_suggestion():
  cfg = _cfg()
  cfg.optim.lr_mults = 1.0
  with pytest.raises(ConfigError) as e:
    config_rules.validate(cfg)
  assert e.value.key == "optim.lr_mults"
  assert str(e.value).startswith("optim.lr_mults: unknown config key")
  assert "optim.lr" in str(e.value)


def test_unknown_section_is_named():
  cfg = _cfg()
  cfg.opt = dict(lr=0.1)
  with pytest.raises(ConfigError, match=r"^opt\.lr: unknown config key"):
    config_rules.validate(cfg)


def test_wrong_type_is_named():
  cfg = _cfg()
  cfg.unlock()
  del cfg.model["width"]
  cfg.model.width = "wide"
  with pytest.raises(ConfigError, match=r"^model\.width: expected int, got str 'wide'"):
    config_rules.validate(cfg)


def test_bool_is_not_accepted_for_a_number():
  cfg = _cfg()
  cfg.unlock()
  del cfg.optim["lr"]
  cfg.optim.lr = True
  with pytest.raises(ConfigError, match=r"^optim\.lr: expected float"):
    config_rules.validate(cfg)


def test_int_is_accepted_for_a_float():
  cfg = _cfg()
  cfg.train.num_epochs = 3
  config_rules.validate(cfg)


@pytest.mark.parametrize("key,value,expected", [
    ("model.arch", "resnet51", "one of resnet18"),
    ("model.head", "softmax", "one of dex"),
    ("model.bn_momentum", 1.0, "in [0, 1)"),
    ("model.dldl_sigma", 0.0, "> 0"),
    ("data.image_size", 40, "a multiple of 32"),
    ("train.batch_size", 0, "> 0"),
    ("model.max_age", 0, "> model.min_age (0)"),
])
def test_impossible_values_are_named(key, value, expected):
  cfg = _cfg()
  section, name = key.split(".")
  cfg[section][name] = value
  with pytest.raises(ConfigError) as e:
    config_rules.validate(cfg)
  assert e.value.key == key
  assert expected in str(e.value)


@pytest.mark.parametrize("overrides,key", [
    (dict(head="softmax"), "model.head"),
    (dict(min_age=60, max_age=60), "model.max_age"),
    (dict(min_age=70, max_age=50), "model.max_age"),
    (dict(head="dldl", dldl_sigma=0.0), "model.dldl_sigma"),
    (dict(head="dldl", dldl_sigma=-1.0), "model.dldl_sigma"),
    (dict(head="regression", regression_loss="huber"), "model.regression_loss"),
    (dict(head="mean_variance", mean_variance_lambda2=-0.1), "model.mean_variance_lambda2"),
    (dict(dldl_sigma=float("nan")), "model.dldl_sigma"),
])
def test_head_values_are_named(overrides, key):
  cfg = _cfg()
  for name, value in overrides.items():
    cfg.model[name] = value
  with pytest.raises(ConfigError, match=f"^{key}: ") as info:
    config_rules.validate(cfg)
  assert info.value.key == key
