"""Start-up validation of a resolved config: fail before anything compiles.

Every error is an :class:`agejax.errors.ConfigError` whose message starts
with the offending key. Most rules are here; some still live with the modules
that own the choice (model values in ``agejax.models``, group patterns in
``train.optim.assign_groups`` since they need the parameter paths, schedule
lengths in ``train.schedules`` since they need the run length, evaluation
batch sizes in ``evaluation.predictions``).
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Callable, Iterator

import ml_collections

from agejax.config import defaults
from agejax import models
from agejax.models import heads
from agejax.train import run_length
from agejax.train import optim
from agejax.errors import ConfigError

DTYPES = ("float32", "bfloat16")


def leaves(cfg: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted key, value) of every non-section entry, sorted."""
  for name in sorted(cfg.keys()):
    value = cfg[name]
    key = f"{prefix}{name}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaves(value, key + ".")
    else:
      yield key, value


def _type_ok(default: Any, value: Any) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(default, bool) and isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def unknown_key_error(key: str) -> ConfigError | None:
  """The error for a dotted key the defaults do not declare, or None if they do."""
  declared = dict(leaves(defaults.default_config()))
  if key in declared:
    return None
  if key in {k.rsplit(".", 1)[0] for k in declared if "." in k}:
    return ConfigError(key, "is a section; set its keys, not the section itself")
  close = difflib.get_close_matches(key, declared, n=3)
  hint = f" (did you mean {', '.join(close)}?)" if close else ""
  return ConfigError(key, f"unknown config key{hint}")


def check_keys_and_types(cfg: ml_collections.ConfigDict) -> None:
  """Rejects keys the defaults do not declare and values of the wrong type."""
  declared = dict(leaves(defaults.default_config()))
  for key, value in leaves(cfg):
    if key not in declared:
      raise unknown_key_error(key)
    if not _type_ok(declared[key], value):
      raise ConfigError(
          key,
          f"expected {type(declared[key]).__name__}, got "
          f"{type(value).__name__} {value!r}")


def _require(key: str, ok: bool, expectation: str, value: Any) -> None:
  if not ok:
    raise ConfigError(key, f"must be {expectation}, got {value!r}")


def _one_of(choices: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: v in choices), "one of " + ", ".join(choices)


def _finite(predicate: Callable[[Any], bool]) -> Callable[[Any], bool]:
  return lambda v: math.isfinite(v) and predicate(v)


_POSITIVE = _finite(lambda v: v > 0), "> 0"
_NON_NEGATIVE = _finite(lambda v: v >= 0), ">= 0"
_FRACTION = _finite(lambda v: 0 <= v < 1), "in [0, 1)"


def _is_regex(value: str) -> bool:
  try:
    re.compile(value)
  except re.error:
    return False
  return True

def _regex_list(value: Any) -> bool:
  return all(isinstance(v, str) and _is_regex(v) for v in value)

# key -> (predicate, what the predicate expects)
_VALUE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.arch": _one_of(models.ARCHS),
    "model.head": _one_of(heads.HEADS),
    "model.dtype": _one_of(DTYPES),
    "model.width": ((lambda v: v >= 1 and v % 1 == 0), "a positive integer"),
    "model.bn_momentum": _FRACTION,
    "model.bn_epsilon": _POSITIVE,
    "model.dropout": _FRACTION,
    "model.vgg_dropout": _FRACTION,
    "model.min_age": _NON_NEGATIVE,
    "model.regression_loss": _one_of(heads.REGRESSION_LOSSES),
    "model.dldl_sigma": _POSITIVE,
    "model.mean_variance_lambda1": _NON_NEGATIVE,
    "model.mean_variance_lambda2": _NON_NEGATIVE,
    "data.dataset": ((lambda v: bool(v.strip())), "a TFDS dataset name"),
    "data.image_size": ((lambda v: v >= 32 and v % 32 == 0),
                        "a multiple of 32 (the networks downsample by 32), >= 32"),
    "data.num_train_examples": _NON_NEGATIVE,
    "data.protocol_split": ((lambda v: -1 <= v <= 4), "-1 (off) or a benchmark split 0-4"),
    "train.batch_size": _POSITIVE,
    "train.num_epochs": _NON_NEGATIVE,
    "train.num_train_steps": _NON_NEGATIVE,
    "train.log_every_steps": _POSITIVE,
    "train.eval_every_steps": _NON_NEGATIVE,
    "train.checkpoint_every_steps": _NON_NEGATIVE,
    "train.keep_checkpoints": _POSITIVE,
    "train.keep_best": _NON_NEGATIVE,
    "train.best_metric": _one_of(("mae", "loss", "rmse")),
    "train.early_stop_patience": _NON_NEGATIVE,
    "train.train_eval_examples": _NON_NEGATIVE,
    "optim.name": _one_of(optim.OPTIMIZERS),
    "optim.lr": _POSITIVE,
    "optim.momentum": _FRACTION,
    "optim.b1": _FRACTION,
    "optim.b2": _FRACTION,
    "optim.ema_decay": _FRACTION,
    "optim.eps": _NON_NEGATIVE,
    "optim.lars_trust_coefficient": _POSITIVE,
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.clip_grad_norm": (_NON_NEGATIVE[0], ">= 0 (0: off)"),
    "optim.grad_accum_steps": ((lambda v: v >= 1), "an integer >= 1"),
    "optim.wd_mode": _one_of(optim.WD_MODES),
    "optim.lr_scaling": _one_of(tuple(run_length.LR_SCALINGS)),
    "optim.wd_exclude": (_is_regex, "a valid regex ('' decays everything)"),
    "init.include": (_regex_list, "a list of valid regexes (empty: everything)"),
    "init.exclude": (_regex_list, "a list of valid regexes"),
    "init.batch_stats": _one_of(("load", "reset")),
}


def check_values(cfg: ml_collections.ConfigDict) -> None:
  """Rejects impossible values of the model, data and training sections."""
  for key, (predicate, expectation) in _VALUE_RULES.items():
    section, name = key.split(".")
    value = cfg[section][name]
    _require(key, predicate(value), expectation, value)
  _require("optim.wd_mode", not (cfg.optim.name == "adamw" and cfg.optim.wd_mode == "l2"),
           "decoupled with adamw (it decouples the weight decay by definition; use "
           "optim.name='adam' for Adam with an L2 penalty)", cfg.optim.wd_mode)
  _require("model.max_age", cfg.model.max_age > cfg.model.min_age,
           f"> model.min_age ({cfg.model.min_age})", cfg.model.max_age)
  _require("train.num_epochs", cfg.train.num_epochs > 0 or cfg.train.num_train_steps > 0,
           "> 0 unless train.num_train_steps is set", cfg.train.num_epochs)
  # VGG's fc6 is sized by the input: one side for the whole run.
  _require("data.image_size_schedule",
           not (cfg.model.arch == "vgg16" and cfg.data.image_size_schedule),
           "empty with model.arch=vgg16 (its fc6 layer fixes the input size)",
           cfg.data.image_size_schedule)


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks keys, types and values; returns the config for chaining."""
  check_keys_and_types(cfg)
  check_values(cfg)
  return cfg
