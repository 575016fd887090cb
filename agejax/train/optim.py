"""The optimizer: ``optim.*`` turned into one optax GradientTransformation.

Every parameter is assigned, by the regexes of ``optim.groups`` (first match
wins) and ``optim.wd_exclude``, a learning-rate multiplier, an effective
weight-decay multiplier and a frozen flag. The transformation is, outermost
first::

  partition {"trainable": T, "frozen": set_to_zero}
  T = [MultiSteps(]  clip_by_global_norm ->
                     partition {label per distinct (lr_mult, wd_mult):
                                optimizer chain}  [)]

Splitting the frozen parameters off at the top keeps them out of everything
below: no moments, no accumulation buffer (MaskedNode in every inner state),
and their gradients do not count in the clipping norm. Each optimizer chain
uses the learning rate ``schedule(count) * lr_mult``; its count advances once
per optimizer update (once per ``grad_accum_steps`` micro-batches).

Weight decay (``optim.weight_decay * wd_mult``):
  * ``decoupled``: added after the optimizer's own scaling and before the
    learning rate, ``p -= lr * (update + wd * p)`` (SGDW, AdamW).
  * ``l2``: added to the gradient before the optimizer sees it.
  * ``adamw`` is decoupled by definition; ``lamb`` places a decoupled decay
    before its trust ratio as optax.lamb does; ``lars`` always adds the decay
    to the gradient before the trust ratio, as in You et al. and optax.lars,
    so ``wd_mode`` does not change it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping

import jax
import optax

from agejax.config import config_check
from agejax.models import paths
from agejax.train import schedules
from agejax.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lamb", "lars")
WD_MODES = ("decoupled", "l2")
DEFAULT_GROUP = "default"
TRAINABLE = "trainable"
FROZEN = "frozen"
_GROUP_KEYS = ("lr_mult", "wd_mult", "freeze", "bn")
# BatchNorm in a group: "train" normalises with batch statistics and updates
# the running ones; "frozen" normalises with the running statistics and never
# changes them (the default of a frozen group).
BN_MODES = ("train", "frozen")
# How many real parameter paths an error message shows.
_EXAMPLE_PATHS = 6

RULES: dict[str, config_check.Rule] = {
    "optim.name": config_check.one_of(OPTIMIZERS),
    "optim.lr": config_check.POSITIVE,
    "optim.momentum": config_check.FRACTION,
    "optim.b1": config_check.FRACTION,
    "optim.b2": config_check.FRACTION,
    "optim.ema_decay": config_check.FRACTION,
    "optim.eps": config_check.NON_NEGATIVE,
    "optim.lars_trust_coefficient": config_check.POSITIVE,
    "optim.weight_decay": config_check.NON_NEGATIVE,
    "optim.clip_grad_norm": (config_check.NON_NEGATIVE[0], ">= 0 (0: off)"),
    "optim.wd_mode": config_check.one_of(WD_MODES),
    "optim.wd_exclude": (config_check.REGEX[0], "a valid regex ('' decays everything)"),
}


def check(cfg: Any) -> None:
  """The optimizer's rules that need no parameter paths (:func:`assign_groups` has those)."""
  config_check.check_rules(cfg, RULES)
  config_check.require(
      "optim.wd_mode", not (cfg.optim.name == "adamw" and cfg.optim.wd_mode == "l2"),
      "decoupled with adamw (it decouples the weight decay by definition; use "
      "optim.name='adam' for Adam with an L2 penalty)", cfg.optim.wd_mode)
  _parse_groups(cfg.optim)


@dataclasses.dataclass(frozen=True)
class Assignment:
  """How one parameter is optimized.

  Attributes:
    group: the ``optim.groups`` regex that matched it, or "default".
    lr_mult: multiplier of the scheduled learning rate (0 when frozen).
    wd_mult: effective multiplier of ``optim.weight_decay``: 0 when the path
      matches ``optim.wd_exclude``, when ``optim.weight_decay`` is 0 or when
      the parameter is frozen.
    frozen: the parameter never changes and has no optimizer state.
    batch_norm: the group's BatchNorm mode, one of ``BN_MODES`` (it matters
      for the scale/bias of a BatchNorm layer: the layer follows its scale).
  """
  group: str
  lr_mult: float
  wd_mult: float
  frozen: bool
  batch_norm: str = "train"


@dataclasses.dataclass(frozen=True)
class _Group:
  index: int
  pattern: str
  regex: re.Pattern[str]
  lr_mult: float
  wd_mult: float
  freeze: bool
  batch_norm: str

  @property
  def key(self) -> str:
    return f"optim.groups[{self.index}]"


def _is_number(value: Any) -> bool:
  return (not isinstance(value, bool) and isinstance(value, (int, float)) and
          math.isfinite(value))


def _parse_groups(optim_cfg: Any) -> list[_Group]:
  """Reads ``optim.groups``: ordered (regex, dict(lr_mult, wd_mult, freeze, bn))."""
  raw = optim_cfg.groups
  if raw is None:
    return []
  if isinstance(raw, (str, Mapping)) or not isinstance(raw, (tuple, list)):
    raise ConfigError("optim.groups", "expected an ordered sequence of "
                      f"(regex, dict) pairs, got {raw!r}")
  groups = []
  for i, entry in enumerate(raw):
    key = f"optim.groups[{i}]"
    if not isinstance(entry, (tuple, list)) or len(entry) != 2:
      raise ConfigError(key, f"expected a (regex, dict) pair, got {entry!r}")
    pattern, options = entry
    if not isinstance(pattern, str):
      raise ConfigError(key, f"the pattern must be a string, got {pattern!r}")
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ConfigError(key, f"invalid regex {pattern!r}: {e}") from None
    if not hasattr(options, "items"):  # dict, ConfigDict, FrozenConfigDict
      raise ConfigError(key, f"pattern {pattern!r}: expected a dict of "
                        f"{list(_GROUP_KEYS)}, got {options!r}")
    options = dict(options.items())
    unknown = sorted(set(options) - set(_GROUP_KEYS))
    if unknown:
      raise ConfigError(key, f"pattern {pattern!r}: unknown key(s) {unknown}; "
                        f"known: {list(_GROUP_KEYS)}")
    mults = {}
    for name in ("lr_mult", "wd_mult"):
      value = options.get(name, 1.0)
      if not _is_number(value) or value < 0:
        raise ConfigError(key, f"pattern {pattern!r}: {name} must be a number "
                          f">= 0, got {value!r}")
      mults[name] = float(value)
    freeze = options.get("freeze", False)
    if not isinstance(freeze, bool):
      raise ConfigError(key, f"pattern {pattern!r}: freeze must be True or "
                        f"False, got {freeze!r}")
    bn = options.get("bn", BN_MODES[1] if freeze else BN_MODES[0])
    if bn not in BN_MODES:
      raise ConfigError(key, f"pattern {pattern!r}: bn must be one of {list(BN_MODES)}, "
                        f"got {bn!r}")
    groups.append(_Group(i, pattern, regex, freeze=freeze, batch_norm=bn, **mults))
  return groups


def _example_paths(all_paths: list[str]) -> str:
  """A few paths spread over the tree, to show what the regexes see."""
  step = max(1, math.ceil(len(all_paths) / _EXAMPLE_PATHS))
  return ", ".join(all_paths[::step][:_EXAMPLE_PATHS])


def assign_groups(optim_cfg: Any, params: Any) -> dict[str, Assignment]:
  """Assigns every parameter its group, multipliers and frozen flag.

  Args:
    optim_cfg: the ``optim`` config.
    params: the parameter tree (nested dicts of arrays).

  Returns:
    {slash path: Assignment} in tree order.

  Raises:
    ConfigError: naming ``optim.groups[i]`` and its pattern when the regex is
      invalid, has unknown keys or negative multipliers, or selects no
      parameter; ``optim.groups`` when every parameter would be frozen.
  """
  all_paths = list(paths.flatten(params))
  if not all_paths:
    raise ValueError("the parameter tree has no leaves")
  groups = _parse_groups(optim_cfg)
  exclude = (re.compile(optim_cfg.wd_exclude)
             if optim_cfg.wd_exclude else None)
  weight_decay = float(optim_cfg.weight_decay)
  used = set()
  assignments = {}
  for path in all_paths:
    group = next((g for g in groups if g.regex.search(path)), None)
    if group is None:
      name, lr_mult, wd_mult, frozen, bn = DEFAULT_GROUP, 1.0, 1.0, False, BN_MODES[0]
    else:
      used.add(group.index)
      name, lr_mult, wd_mult, frozen, bn = (group.pattern, group.lr_mult, group.wd_mult,
                                            group.freeze, group.batch_norm)
    if frozen:
      lr_mult = 0.0
    if frozen or weight_decay == 0 or (exclude and exclude.search(path)):
      wd_mult = 0.0
    assignments[path] = Assignment(name, lr_mult, wd_mult, frozen, bn)

  for group in groups:
    if group.index in used:
      continue
    matching = [p for p in all_paths if group.regex.search(p)]
    if matching:
      raise ConfigError(
          group.key, f"pattern {group.pattern!r} only matches parameters an "
          f"earlier group already took (first match wins), e.g. {matching[0]}")
    raise ConfigError(
        group.key, f"pattern {group.pattern!r} (re.search) matches no "
        f"parameter; paths look like: {_example_paths(all_paths)}")
  if all(a.frozen for a in assignments.values()):
    raise ConfigError("optim.groups", "every parameter is frozen; nothing "
                      "would train")
  return assignments


def frozen_batch_norm(assignments: dict[str, Assignment]) -> set[str]:
  """Module paths of the BatchNorm layers whose group keeps their statistics fixed.

  A layer is addressed by its scale (``stage1/block0/bn1/scale`` ->
  ``stage1/block0/bn1``), as its group's regex sees it.
  """
  layers = {paths.batch_norm_layer(path) for path, a in assignments.items()
            if a.batch_norm == "frozen" and path.endswith("/scale")}
  layers.discard(None)  # a scale outside a BatchNorm layer
  return layers


def _label(assignment: Assignment) -> str:
  # repr, not a rounded format: distinct multipliers must get distinct chains.
  return f"lr_mult={assignment.lr_mult!r},wd_mult={assignment.wd_mult!r}"


@dataclasses.dataclass(frozen=True)
class LearningRates:
  """Every group's learning rate at every optimizer update: the one definition.

  A group's rate at update ``u`` is ``base(u) * lr_mult``, where ``base`` is
  the schedule times the batch phase's ``lr_factor`` (``optim.lr_scaling``).
  The optimizer applies :meth:`of_group_multiplier`, the training step logs
  :meth:`at` as ``lr/<group>``, and the plan prints :meth:`at`.
  """
  base: optax.Schedule
  group_mults: Mapping[str, float]  # every group, first-appearance order; frozen: 0

  def of_group_multiplier(self, lr_mult: float) -> optax.Schedule:
    return lambda update: self.base(update) * lr_mult

  def at(self, update: jax.typing.ArrayLike) -> dict[str, jax.Array]:
    """{group: learning rate} at optimizer update ``update`` (not micro-batches)."""
    return {group: self.of_group_multiplier(mult)(update)
            for group, mult in self.group_mults.items()}


def learning_rates(optim_cfg: Any, length: Any, assignments: Mapping[str, Assignment],
                   sweep: optax.Schedule | None = None) -> LearningRates:
  """The run's :class:`LearningRates`.

  Args:
    optim_cfg: the ``optim`` config; ``optim.schedule`` and ``optim.lr`` give
      the base schedule unless ``sweep`` replaces it.
    length: the run's :class:`agejax.train.run_length.RunLength`: the
      schedule's length in updates and the phases' ``lr_factor``.
    assignments: from :func:`assign_groups`.
    sweep: a base schedule per update of its own (the LR range test's); the
      phases still scale it.
  """
  base = sweep if sweep is not None else schedules.build_schedule(
      optim_cfg.schedule, optim_cfg.lr, length.updates_per_epoch, length.total_updates)
  mults: dict[str, float] = {}
  for a in assignments.values():
    mults.setdefault(a.group, a.lr_mult)
  return LearningRates(schedules.phase_scaled(base, length), mults)


def _chain_for(optim_cfg: Any, learning_rate: optax.Schedule,
               wd_mult: float) -> optax.GradientTransformation:
  """The optimizer for parameters sharing one (lr_mult, wd_mult)."""
  name = optim_cfg.name
  lr = optax.scale_by_learning_rate(learning_rate)
  weight_decay = float(optim_cfg.weight_decay) * wd_mult
  # Without decay the chain simply has no decay step: no mask is needed since
  # every parameter of a label shares the same multiplier.
  decay = [optax.add_decayed_weights(weight_decay)] if weight_decay > 0 else []
  adam = optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2,
                             eps=optim_cfg.eps)
  if name == "lars":
    # optax.lars's composition; the trust ratio is applied to every parameter.
    return optax.chain(
        *decay,
        optax.scale_by_trust_ratio(
            trust_coefficient=optim_cfg.lars_trust_coefficient,
            eps=optim_cfg.eps),
        lr,
        optax.trace(decay=optim_cfg.momentum))
  if name == "lamb":
    trust = optax.scale_by_trust_ratio()
    if optim_cfg.wd_mode == "l2":
      return optax.chain(*decay, adam, trust, lr)
    return optax.chain(adam, *decay, trust, lr)
  scaling = {
      "sgd": [],
      "momentum": [optax.trace(decay=optim_cfg.momentum)],
      "nesterov": [optax.trace(decay=optim_cfg.momentum, nesterov=True)],
      "adam": [adam],
      "adamw": [adam],
  }[name]
  if optim_cfg.wd_mode == "l2":
    return optax.chain(*decay, *scaling, lr)
  return optax.chain(*scaling, *decay, lr)


def _labeller(labels: Mapping[str, str]) -> Callable[[Any], Any]:
  """A label function for optax.partition, mapping a tree by leaf path.

  A function rather than a fixed tree because the inner partition receives
  trees where the frozen leaves are already MaskedNode; mapping by path keeps
  the same structure.
  """

  def label(path: str, _: Any) -> str:
    if path not in labels:
      raise ValueError(
          f"parameter {path!r} was not in the tree the optimizer was built "
          "for")
    return labels[path]

  return lambda tree: paths.map_with_path(label, tree)


def build_optimizer(optim_cfg: Any, params: Any,
                    rates: LearningRates) -> optax.GradientTransformation:
  """Builds the whole optimizer for ``params``.

  Args:
    optim_cfg: the ``optim`` config.
    params: the parameter tree the optimizer will be initialized with (only
      its paths matter).
    rates: from :func:`learning_rates`; each group's chain applies its rate.

  Returns:
    An optax GradientTransformation; ``update`` needs ``params`` (weight decay
    and trust ratios read them).

  Raises:
    ConfigError: naming the offending ``optim.*`` key.
  """
  assignments = assign_groups(optim_cfg, params)
  trainable = {p: a for p, a in assignments.items() if not a.frozen}
  transforms = {}
  for a in trainable.values():
    label = _label(a)
    if label not in transforms:
      transforms[label] = _chain_for(optim_cfg, rates.of_group_multiplier(a.lr_mult),
                                     a.wd_mult)
  core = optax.partition(
      transforms, _labeller({p: _label(a) for p, a in trainable.items()}))
  if optim_cfg.clip_grad_norm > 0:
    core = optax.chain(optax.clip_by_global_norm(optim_cfg.clip_grad_norm),
                       core)
  if optim_cfg.grad_accum_steps > 1:
    # The mean of the micro-batch gradients, so the loss scale (and the
    # learning rate) need not change with the accumulation.
    core = optax.MultiSteps(
        core, every_k_schedule=optim_cfg.grad_accum_steps,
        use_grad_mean=True).gradient_transformation()
  return optax.partition(
      {TRAINABLE: core, FROZEN: optax.set_to_zero()},
      _labeller({p: FROZEN if a.frozen else TRAINABLE
                 for p, a in assignments.items()}))


def ema_update(ema: Any, params: Any, decay: jax.typing.ArrayLike) -> Any:
  """One step of the parameters' exponential moving average.

  Returns ``decay * ema + (1 - decay) * params`` leaf by leaf
  (``optim.ema_decay`` is validated with the config).
  """
  return optax.incremental_update(new_tensors=params, old_tensors=ema,
                                  step_size=1.0 - decay)
