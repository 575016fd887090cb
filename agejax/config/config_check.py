"""Start-up checks of a config's keys and types, and the vocabulary of value rules.

Keys and types are checked here, against :mod:`agejax.config.defaults`. A rule
on a value lives with the module that owns the choice: each owner exports its
allowed values, a ``RULES`` table written in this module's vocabulary
(:data:`POSITIVE`, :func:`one_of`, ...) and ``check(config)``;
:func:`agejax.train.config_rules.validate` runs them in a fixed order. Rules
that need what only a running job knows (the dataset's splits, the parameter
paths, the run's length, the devices) are checked by their owners when that
is known. Every error is an :class:`agejax.errors.ConfigError` whose message
starts with the offending key. This package imports no other part of agejax
but its errors, so every owner can use it.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Callable, Iterator, Mapping

import ml_collections

from agejax.config import defaults
from agejax.errors import ConfigError

# A value rule: (predicate, what it expects, written to follow "must be").
Rule = tuple[Callable[[Any], bool], str]


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


def require(key: str, ok: bool, expectation: str, value: Any) -> None:
  """The one rendering of a broken rule: ``key: must be <expectation>, got <value>``."""
  if not ok:
    raise ConfigError(key, f"must be {expectation}, got {value!r}")


def check_rules(cfg: ml_collections.ConfigDict, rules: Mapping[str, Rule]) -> None:
  """Checks each dotted key of ``rules`` in ``cfg`` against its rule, in order."""
  for key, (predicate, expectation) in rules.items():
    value = cfg
    for name in key.split("."):
      value = value[name]
    require(key, predicate(value), expectation, value)


def one_of(choices: tuple[str, ...]) -> Rule:
  return (lambda v: v in choices), "one of " + ", ".join(choices)


def _finite(predicate: Callable[[Any], bool]) -> Callable[[Any], bool]:
  return lambda v: math.isfinite(v) and predicate(v)


POSITIVE: Rule = _finite(lambda v: v > 0), "> 0"
NON_NEGATIVE: Rule = _finite(lambda v: v >= 0), ">= 0"
FRACTION: Rule = _finite(lambda v: 0 <= v < 1), "in [0, 1)"
POSITIVE_INTEGER: Rule = (lambda v: v >= 1 and v % 1 == 0), "a positive integer"


def _is_regex(value: Any) -> bool:
  try:
    re.compile(value)
  except (re.error, TypeError):
    return False
  return True


REGEX: Rule = _is_regex, "a valid regex ('' matches everything)"
REGEX_LIST: Rule = ((lambda v: all(isinstance(r, str) and _is_regex(r) for r in v)),
                    "a list of valid regexes")
