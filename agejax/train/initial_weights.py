"""Starting weights from an earlier agejax run or a converted pretrained backbone.

Weights land by parameter path. The head (``head/...``) is re-initialised
when the source lacks it or its shape differs (a different age range or head
type), and the log says so. Any other missing, unexpected or mis-shaped
tensor is listed in one error unless ``init.allow_missing`` /
``init.allow_unexpected`` permit it.

``init.include`` / ``init.exclude`` (regexes, ``re.search``) choose which
paths load at all; the others keep the fresh initialisation of the run's
seed, bit for bit, and are neither missing nor unexpected.
``init.batch_stats="reset"`` loads no running statistics.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import ml_collections
import numpy as np
from absl import logging

from agejax.config import config_check
from agejax.models import paths
from agejax import pretrained
from agejax.errors import ConfigError
from agejax.workdir import checkpointing
from agejax.workdir import restore
from agejax.workdir import run_config

HEAD_PREFIX = "head/"
# Where a parameter's starting value comes from (the plan's "source").
FRESH = "fresh"
PRETRAINED = "pretrained"
CHECKPOINT = "checkpoint"
_SHOWN = 12  # paths listed per kind in an error before "... and N more"
BATCH_STATS = ("load", "reset")

RULES: dict[str, config_check.Rule] = {
    "init.include": (config_check.REGEX_LIST[0], "a list of valid regexes (empty: everything)"),
    "init.exclude": config_check.REGEX_LIST,
    "init.batch_stats": config_check.one_of(BATCH_STATS),
}


def check(cfg: ml_collections.ConfigDict) -> None:
  """The rules of ``init.*`` that need neither the weights nor the model."""
  config_check.check_rules(cfg, RULES)
  config_check.require("init.checkpoint", not (cfg.init.checkpoint and cfg.init.pretrained),
                       "empty when init.pretrained is set (one source of initial weights)",
                       cfg.init.checkpoint)


def _listing(kind: str, items: list[str]) -> str:
  shown = ", ".join(items[:_SHOWN])
  more = f" ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
  return f"{kind} ({len(items)}): {shown}{more}"


def selection(init_cfg: ml_collections.ConfigDict) -> Callable[[str], bool]:
  """``path -> bool``: whether ``init.include`` / ``init.exclude`` let the path load."""
  include = [re.compile(p) for p in init_cfg.include]
  exclude = [re.compile(p) for p in init_cfg.exclude]
  return lambda path: ((not include or any(r.search(path) for r in include))
                       and not any(r.search(path) for r in exclude))


def merge_by_path(target: dict[str, Any], source: dict[str, Any], *, key: str,
                  allow_missing: bool, allow_unexpected: bool,
                  selected: Callable[[str], bool] = lambda path: True
                  ) -> tuple[dict[str, Any], list[str]]:
  """``target`` with every selected leaf the (flat) ``source`` has at the same path.

  Args:
    target: flat {path: array} of the freshly initialised model.
    source: flat {path: array} to load.
    key: the config key named in errors.
    selected: paths (of either side) to consider; the rest of ``target``
      stays as it is and the rest of ``source`` is ignored.

  Returns:
    The merged flat dict and the selected paths left at their fresh
    initialisation.
  """
  merged, fresh = dict(target), []
  missing, unexpected, misshaped = [], [], []
  for path, value in target.items():
    if not selected(path):
      continue
    if path not in source:
      (fresh if path.startswith(HEAD_PREFIX) else missing).append(path)
      continue
    loaded = np.asarray(source[path])
    if loaded.shape != tuple(value.shape):
      if path.startswith(HEAD_PREFIX):
        fresh.append(path)
        continue
      misshaped.append(f"{path} {loaded.shape} vs model {tuple(value.shape)}")
      continue
    merged[path] = loaded.astype(value.dtype)
  unexpected = [p for p in source
                if selected(p) and p not in target and not p.startswith(HEAD_PREFIX)]
  problems = []
  if misshaped:
    problems.append(_listing("shape differs", misshaped))
  if missing and not allow_missing:
    problems.append(_listing("missing in the source", missing))
  if unexpected and not allow_unexpected:
    problems.append(_listing("not in the model", unexpected))
  if problems:
    raise ConfigError(key, "cannot load into the model: " + "; ".join(problems) +
                      " (init.allow_missing / init.allow_unexpected permit the last two)")
  if missing:
    fresh.extend(missing)
  return merged, fresh


def read_source(path: str, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Flat (params, batch_stats) of an agejax run's latest checkpoint.

  ``path`` is the run's workdir; its checkpointer finds the step.
  """
  if not run_config.exists(path) and not os.path.isdir(os.path.join(path, checkpointing.CHECKPOINTS_DIR)):
    raise ConfigError(key, f"{path} is not an agejax training workdir (no "
                      f"{run_config.CONFIG_FILE} or {checkpointing.CHECKPOINTS_DIR}/)")
  with restore.checkpointer(path) as ckpt:
    try:
      step = ckpt.resolve("latest")
    except FileNotFoundError as e:
      raise ConfigError(key, str(e)) from e
    stored = ckpt.restore_params(step)
  logging.info("initial weights from step %d of %s", step, path)
  return (paths.flatten(stored["params"]),
          paths.flatten(stored.get("batch_stats") or {}))


def prepare_pretrained(cfg: ml_collections.ConfigDict) -> pretrained.Imported | None:
  """Reads ``init.pretrained`` and sets the model keys its weights need.

  Call before anything is built from ``cfg.model``: the layer variant,
  BatchNorm epsilon and input preprocessing follow the weights.
  """
  if not cfg.init.pretrained:
    return None
  try:
    imported = pretrained.load(cfg.init.pretrained, cfg.data.image_size)
    pretrained.apply_overrides(cfg.model, imported)
  except pretrained.WeightImportError as e:
    raise ConfigError("init.pretrained", str(e)) from e
  return imported


def load_initial_weights(init_cfg: ml_collections.ConfigDict, params: Any, batch_stats: Any,
                         imported: pretrained.Imported | None = None) -> tuple[Any, Any]:
  """``params``/``batch_stats`` overwritten from ``init.checkpoint`` or ``init.pretrained``."""
  key = "init.checkpoint" if init_cfg.checkpoint else "init.pretrained"
  source_path = init_cfg.checkpoint or init_cfg.pretrained
  if not source_path:
    return params, batch_stats
  if init_cfg.pretrained:
    imported = imported or pretrained.load(init_cfg.pretrained)
    src_params, src_stats = imported.params, imported.batch_stats
  else:
    src_params, src_stats = read_source(source_path, key)
  selected = selection(init_cfg)
  opts = dict(key=key, allow_missing=init_cfg.allow_missing,
              allow_unexpected=init_cfg.allow_unexpected)
  new_params, fresh = merge_by_path(paths.flatten(params), src_params, selected=selected,
                                    **opts)
  stats_selected = (lambda path: False) if init_cfg.batch_stats == "reset" else selected
  new_stats, fresh_stats = merge_by_path(paths.flatten(batch_stats), src_stats,
                                         selected=stats_selected, **opts)
  if fresh or fresh_stats:
    logging.warning("initialised afresh (not in %s or shaped differently): %s",
                    source_path, ", ".join(fresh + fresh_stats))
  return paths.unflatten(new_params), paths.unflatten(new_stats)


def sources(init_cfg: ml_collections.ConfigDict, shapes: dict[str, tuple[int, ...]],
            imported: pretrained.Imported | None) -> dict[str, str]:
  """``{parameter path: FRESH | PRETRAINED | CHECKPOINT}``: where each starts.

  For a pretrained file the answer is exact (its tensors are known); for a
  checkpoint it is what the selection asks for (a checkpoint holds the
  whole model, and a missing tensor is an error at load time).
  """
  selected = selection(init_cfg)

  def source_of(path: str, shape: tuple[int, ...]) -> str:
    if not selected(path):
      return FRESH
    if init_cfg.checkpoint:
      return CHECKPOINT
    if init_cfg.pretrained and imported is not None and path in imported.params and (
        tuple(np.shape(imported.params[path])) == tuple(shape)):
      return PRETRAINED
    return FRESH

  return {path: source_of(path, shape) for path, shape in shapes.items()}


def describe(init_cfg: ml_collections.ConfigDict, imported: pretrained.Imported | None) -> str:
  """Where the starting weights come from, in a few words (the plan and the console)."""
  if init_cfg.checkpoint:
    text = f"the latest checkpoint of {init_cfg.checkpoint} (head re-initialised if it differs)"
  elif init_cfg.pretrained:
    tensors = len(imported.params) + len(imported.batch_stats) if imported else 0
    source = f"{imported.source}, {tensors} tensors, " if imported else ""
    head = imported.head if imported else {}
    kept = (f"backbone and {head['head']} head of ages {head['min_age']}-{head['max_age']}, "
            "kept where the run's head is the same" if head else
            "backbone; the age head starts fresh")
    text = f"{init_cfg.pretrained} ({source}{kept})"
  else:
    return "random init"
  if init_cfg.include or init_cfg.exclude:
    text += (f"; only paths matching {list(init_cfg.include) or 'anything'}"
             f"{f' and not {list(init_cfg.exclude)}' if init_cfg.exclude else ''}")
  if init_cfg.batch_stats == "reset":
    text += "; BatchNorm running statistics reset"
  return text
