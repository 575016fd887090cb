"""The plan: where every parameter lands in the optimizer, before any step runs.

``python -m agejax.main --dry_run`` resolves the config, builds the model's
parameter shapes (nothing is allocated) and the optimizer, and reports one row
per parameter: its group, learning-rate and weight-decay multipliers and
whether it is frozen, its BatchNorm mode and where its starting value comes
from, plus the learning rate each group gets over the run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from agejax import json_files
from agejax import models
from agejax import terminal
from agejax.data import catalog
from agejax.data import exclusions
from agejax.models import paths
from agejax.train import initial_weights
from agejax.train import loss_weights
from agejax.train import run_length
from agejax.train import optim
from agejax.train import schedules
from agejax.train import step_state
from agejax.workdir import run_config


@dataclasses.dataclass(frozen=True)
class PlanRow:
  path: str
  shape: tuple[int, ...]
  group: str
  lr_mult: float
  wd_mult: float
  frozen: bool
  batch_norm: str = "train"  # the group's BN mode (optim.BN_MODES)
  source: str = initial_weights.FRESH  # where the starting value comes from

  @property
  def size(self) -> int:
    return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class Plan:
  rows: tuple[PlanRow, ...]
  length: run_length.RunLength
  # (step, {group: learning rate}) at the milestones of the schedule.
  lr_milestones: tuple[tuple[int, dict[str, float]], ...]
  optimizer_state_floats: int
  # The base learning rate along the run (steps, lr); a group's is lr_mult x.
  lr_curve: tuple[np.ndarray, np.ndarray]
  group_lr_mults: dict[str, float]
  age_weights: loss_weights.AgeWeights | None = None  # train.loss_weighting's table

  @property
  def trainable(self) -> int:
    return sum(r.size for r in self.rows if not r.frozen)

  @property
  def frozen(self) -> int:
    return sum(r.size for r in self.rows if r.frozen)


def plan_rows(assignments: dict[str, optim.Assignment], shapes: dict[str, tuple[int, ...]],
              sources: dict[str, str] | None = None, all_bn_frozen: bool = False
              ) -> tuple[PlanRow, ...]:
  """One row per parameter, input to output.

  ``sources`` from ``initial_weights.sources`` (fresh when not given);
  ``all_bn_frozen`` is ``model.freeze_bn_stats``.
  """
  sources = sources or {}
  return tuple(
      PlanRow(path=p, shape=tuple(shapes[p]), group=a.group, lr_mult=a.lr_mult,
              wd_mult=a.wd_mult, frozen=a.frozen,
              batch_norm="frozen" if all_bn_frozen else a.batch_norm,
              source=sources.get(p, initial_weights.FRESH))
      for p, a in sorted(assignments.items(), key=lambda kv: paths.network_order(kv[0])))


def group_batch_norm(rows: Sequence[PlanRow]) -> dict[str, str]:
  """The BN mode of each group that holds BatchNorm layers."""
  modes: dict[str, set[str]] = {}
  for r in rows:
    if paths.batch_norm_layer(r.path):
      modes.setdefault(r.group, set()).add(r.batch_norm)
  return {g: "/".join(sorted(m)) for g, m in modes.items()}


def group_sources(rows: Sequence[PlanRow]) -> dict[str, str]:
  """Where each group's weights come from: one source, or the share of each."""
  counts: dict[str, dict[str, int]] = {}
  for r in rows:
    per = counts.setdefault(r.group, {})
    per[r.source] = per.get(r.source, 0) + r.size
  text = {}
  for group, per in counts.items():
    total = sum(per.values())
    text[group] = (next(iter(per)) if len(per) == 1 else
                   " + ".join(f"{s} {n / total:.0%}" for s, n in sorted(per.items())))
  return text


def abstract_params(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The model's parameter tree as shapes only (no memory is allocated)."""
  shapes = models.param_shapes(cfg.model, cfg.data.image_size)
  return paths.unflatten(
      {p: jax.ShapeDtypeStruct(tuple(s), jnp.float32) for p, s in shapes.items()})


def group_labels(rows: Sequence[PlanRow]) -> dict[str, str]:
  """A readable name per group: the blocks it covers, then its pattern.

  ``{"^(stem|stage1)/": "stem+stage1 (^(stem|stage1)/)", "default": "default:
  stage4, head"}``; a block only partly in a group is marked ``(part)``.
  """
  per_block: dict[str, set[str]] = {}
  for r in rows:
    per_block.setdefault(paths.block_of(r.path), set()).add(r.group)
  blocks: dict[str, list[str]] = {}
  for block in sorted(per_block, key=paths.network_order):
    for group in per_block[block]:
      blocks.setdefault(group, []).append(block if len(per_block[block]) == 1
                                          else f"{block} (part)")
  labels = {}
  for group, covered in blocks.items():
    if group == optim.DEFAULT_GROUP:
      labels[group] = f"default: {', '.join(covered)}"
    else:
      labels[group] = f"{'+'.join(covered)} ({group})"
  return labels


def _optimizer_text(cfg: ml_collections.ConfigDict) -> str:
  o = cfg.optim
  if o.name in ("momentum", "nesterov", "lars"):
    extra = f"momentum {o.momentum:g}"
  elif o.name in ("adam", "adamw", "lamb"):
    extra = f"b1 {o.b1:g}, b2 {o.b2:g}, eps {o.eps:g}"
  else:
    extra = "no momentum"
  text = f"{o.name} ({extra}), peak lr {o.lr:g}"
  if o.clip_grad_norm:
    text += f", gradients clipped to norm {o.clip_grad_norm:g}"
  if o.grad_accum_steps > 1:
    text += f", {o.grad_accum_steps} micro-batches per update"
  if o.ema_decay:
    text += f", EMA {o.ema_decay:g} evaluated"
  return text


def _weight_decay_text(cfg: ml_collections.ConfigDict) -> str:
  o = cfg.optim
  if not o.weight_decay:
    return "none"
  mode = {"decoupled": "decoupled (p -= lr * wd * p)",
          "l2": "l2 (wd * p added to the gradient)"}[o.wd_mode]
  if o.name == "adamw":
    mode = "decoupled (adamw)"
  skipped = f"; not on {o.wd_exclude!r}" if o.wd_exclude else "; on every parameter"
  return f"{o.weight_decay:g}, {mode}{skipped}"


def _batch_norm_text(cfg: ml_collections.ConfigDict, rows: Sequence[PlanRow]) -> str:
  """Which groups normalise with batch statistics and which keep their running ones."""
  if cfg.model.freeze_bn_stats:
    return "running statistics used and never updated, in every group (model.freeze_bn_stats)"
  modes = group_batch_norm(rows)
  labels = group_labels(rows)
  if not modes:
    return "none in this model"
  frozen = [labels[g] for g, m in modes.items() if m == "frozen"]
  moving_frozen = sorted(labels[g] for g, m in modes.items()
                         if m != "frozen" and all(r.frozen for r in rows if r.group == g))
  text = (f"batch statistics, running ones updated (momentum {cfg.model.bn_momentum:g})" +
          (f", except frozen (running statistics, never updated): {'; '.join(frozen)}"
           if frozen else ""))
  if moving_frozen:
    text += ("; weights frozen but statistics moving (bn='train'): " + "; ".join(moving_frozen))
  return text


def _excluded_text(cfg: ml_collections.ConfigDict) -> str:
  """``exclude.txt: 12 examples left out (train 4, validation 8)``; checks every key exists."""
  counts = exclusions.per_split(catalog.prepared_builder(cfg.data.dataset, cfg.data.data_dir),
                                cfg.data)
  per = ", ".join(f"{split} {n:,}" for split, n in counts.items())
  return f"{cfg.data.exclude}: {sum(counts.values()):,} examples left out ({per})"


def describe(cfg: ml_collections.ConfigDict, rows: Sequence[PlanRow],
             length: run_length.RunLength, weights: str,
             age_weights: loss_weights.AgeWeights | None = None) -> list[tuple[str, str]]:
  """The run's decisions as (name, text) rows: what --dry_run and the trainer print first.

  ``age_weights``: the step's loss weights by age (``train.loss_weighting``).
  """
  m, d, n = cfg.model, cfg.data, length
  labels = group_labels(rows)
  trainable = sum(r.size for r in rows if not r.frozen)
  frozen = sum(r.size for r in rows if r.frozen)
  groups = []
  bn_modes, sources = group_batch_norm(rows), group_sources(rows)
  for group, label in labels.items():
    rs = [r for r in rows if r.group == group]
    frozen = all(r.frozen for r in rs)
    size = sum(r.size for r in rs)
    bn = f", BN {bn_modes[group]}" if group in bn_modes else ""
    groups.append(f"{label}: {'frozen' if frozen else f'lr x{rs[0].lr_mult:g}'}{bn}, "
                  f"{size:,} params, from {sources[group]}")
  augment = d.augment
  augmentation = ", ".join(filter(None, [
      "random resized crop" if augment.random_resized_crop else "",
      "flip" if augment.flip else "",
      f"rotation +-{augment.rotation_degrees:g} deg" if augment.rotation_degrees else "",
      f"colour jitter {augment.color_jitter:g}" if augment.color_jitter else "",
      "age-balanced sampling" if d.balance_ages else ""])) or "none"
  schedule = cfg.optim.schedule
  warmup = (f", warm-up {schedule.warmup_steps} steps" if schedule.warmup_steps else
            f", warm-up {schedule.warmup_epochs:g} epochs" if schedule.warmup_epochs else "")
  return [
      ("model", f"{m.arch} width {m.width}, {m.head} head (ages {m.min_age}..{m.max_age}), "
                f"{trainable:,} trainable + {frozen:,} frozen params, {m.dtype}"),
      ("weights", weights),
      ("data", f"{d.dataset} {d.train_split} ({n.num_train_examples:,} examples) -> "
               f"{d.eval_split}, {d.image_size}px, {m.preprocessing} preprocessing"),
      *([("excluded", _excluded_text(cfg))] if d.get("exclude") else []),
      ("augmentation", augmentation),
      ("loss weights", age_weights.describe() if age_weights else "none (every example 1)"),
      ("batch", f"{cfg.train.batch_size} global"),
      ("length", f"{n.total_epochs:g} epochs = {n.total_steps:,} steps" + (
          f" of {n.steps_per_epoch:,} per epoch" if len(n.phases) == 1 else
          f" in {len(n.phases)} phases")),
      *([("phases", phases_text(n, cfg.optim.lr))] if len(n.phases) > 1 else []),
      ("optimizer", _optimizer_text(cfg)),
      ("weight decay", _weight_decay_text(cfg)),
      ("schedule", f"{schedule.name}{warmup}"),
      ("groups", "\n".join(groups)),
      ("batchnorm", _batch_norm_text(cfg, rows)),
  ]


def phases_text(length: run_length.RunLength, lr: float) -> str:
  """One line per phase: its epochs, steps, batch, input side and peak learning rate."""
  lines = []
  for p in length.phases:
    end_epoch = length.epoch_of_step(p.end_step)
    lines.append(f"{p.index + 1}: epochs {p.start_epoch:g}-{end_epoch:g}, steps "
                 f"{p.start_step:,}-{p.end_step:,} ({p.steps:,}), batch {p.batch_size}, "
                 f"{p.image_size}px, peak lr {lr * p.lr_factor:g} (x{p.lr_factor:g})")
  return "\n".join(lines)


def fine_tune_warning(cfg: ml_collections.ConfigDict, rows: Sequence[PlanRow]) -> str | None:
  """The warning for a config that fine-tunes (a group below x1 or frozen) from random weights."""
  if cfg.init.pretrained or cfg.init.checkpoint:
    return None
  slowed = sorted({r.group for r in rows if r.frozen or r.lr_mult < 1})
  if not slowed:
    return None
  return ("WARNING: the config fine-tunes (group(s) " + ", ".join(slowed) +
          " frozen or below lr x1) but starts from RANDOM weights: set "
          "init.pretrained=FILE or init.checkpoint=WORKDIR, or drop those groups")


def _milestones(total_steps: int, warmup_steps: int) -> list[int]:
  steps = {0, warmup_steps, total_steps // 4, total_steps // 2,
           (3 * total_steps) // 4, total_steps}
  return sorted(s for s in steps if 0 <= s <= total_steps)


def make_plan(cfg: ml_collections.ConfigDict, imported: Any = None) -> Plan:
  """Builds the plan; raises ConfigError on anything the run would trip on.

  ``imported`` is what ``initial_weights.prepare_pretrained`` read.
  """
  length = run_length.run_length(cfg, run_length.num_train_examples(cfg))
  params = abstract_params(cfg)
  # The trainer's own set-up: the same optimizer and schedule, counted in
  # updates, so the plan is the run (gradient accumulation included).
  statics = step_state.build_step_fns(cfg, length)
  assignments = statics.assignments
  shapes = {p: tuple(x.shape) for p, x in paths.flatten(params).items()}
  rows = plan_rows(assignments, shapes, initial_weights.sources(cfg.init, shapes, imported),
                   bool(cfg.model.freeze_bn_stats))

  state = jax.eval_shape(statics.tx.init, params)
  state_floats = sum(
      math.prod(x.shape) for x in jax.tree.leaves(state)
      if hasattr(x, "shape") and jnp.issubdtype(x.dtype, jnp.floating))

  warmup, _ = schedules.warmup_steps(
      cfg.optim.schedule, length.updates_per_epoch, length.total_updates)
  group_mults = {}
  for r in rows:
    if not r.frozen:
      group_mults.setdefault(r.group, r.lr_mult)
  # Step s (1-based) is the learning rate the run logs as lr/<group> at s.
  rates = statics.learning_rates
  rates_at = jax.jit(rates.at)  # compiled, as the step that logs them is
  milestones = tuple(
      (step, {g: float(lr) for g, lr in rates_at(length.update_of_step(step)).items()
              if g in group_mults})
      # The first step at the peak: the one after the last warm-up update.
      for step in _milestones(length.total_steps, warmup * length.grad_accum_steps + 1))
  curve_steps = np.unique(np.linspace(0, length.total_steps, 400).astype(np.int64))
  updates = np.asarray([length.update_of_step(s) for s in curve_steps])
  curve = (curve_steps, np.asarray(jax.vmap(rates.base)(jnp.asarray(updates))))
  return Plan(rows, length, milestones, state_floats, curve, group_mults, statics.age_weights)


def plan_records(plan: Plan) -> list[dict[str, Any]]:
  """The rows of plan.json: path, shape, group, lr_mult, wd_mult, frozen, batch_norm, source."""
  return [
      dict(path=r.path, shape=list(r.shape), group=r.group, lr_mult=r.lr_mult,
           wd_mult=r.wd_mult, frozen=r.frozen, batch_norm=r.batch_norm, source=r.source)
      for r in plan.rows
  ]


def write_plan(plan: Plan, workdir: str) -> str:
  os.makedirs(workdir, exist_ok=True)
  out = os.path.join(workdir, "plan.json")
  json_files.write_json(out, plan_records(plan))
  return out


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
  widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def _fmt_mult(x: float) -> str:
  return f"{x:g}"


def format_plan(plan: Plan) -> str:
  """A readable report: one row per parameter, totals, and the LR per group."""
  params = _table(
      ("path", "shape", "group", "lr_mult", "wd_mult", "frozen", "source"),
      [(r.path, "x".join(map(str, r.shape)) or "scalar", r.group, _fmt_mult(r.lr_mult),
        _fmt_mult(r.wd_mult), "yes" if r.frozen else "", r.source)
       for r in plan.rows])
  groups: dict[str, list[PlanRow]] = {}
  for r in plan.rows:
    groups.setdefault(r.group, []).append(r)
  labels = group_labels(plan.rows)
  bn_modes, sources = group_batch_norm(plan.rows), group_sources(plan.rows)
  summary = _table(
      ("group", "tensors", "params", "trainable", "frozen", "bn", "source"),
      [(labels[g], len(rs), f"{sum(r.size for r in rs):,}",
        f"{sum(r.size for r in rs if not r.frozen):,}",
        f"{sum(r.size for r in rs if r.frozen):,}", bn_modes.get(g, "-"), sources[g])
       for g, rs in groups.items()])
  lr_groups = sorted({g for _, lrs in plan.lr_milestones for g in lrs})
  lrs = _table(
      ("step", "epoch") + tuple(f"lr[{g}]" for g in lr_groups),
      [(s, f"{plan.length.epoch_of_step(s):.2f}") +
       tuple(f"{lr.get(g, 0.0):.3g}" for g in lr_groups)
       for s, lr in plan.lr_milestones])
  n = plan.length
  return "\n\n".join([
      params, summary,
      f"trainable parameters: {plan.trainable:,}   frozen: {plan.frozen:,}   "
      f"optimizer state: {plan.optimizer_state_floats:,} floats",
      f"run: {n.total_steps:,} steps = {n.total_epochs:.2f} epochs " + (
          f"of {n.steps_per_epoch:,} steps" if len(n.phases) == 1 else
          f"in {len(n.phases)} phases") + f" ({n.num_train_examples:,} examples)",
      lrs,
  ])


def dry_run(cfg: ml_collections.ConfigDict, workdir: str) -> str:
  """Validates ``cfg``, prints the plan and writes it; returns plan.json's path."""
  from agejax.train import config_rules  # pylint: disable=import-outside-toplevel
  from agejax.train import lr_plots  # pylint: disable=import-outside-toplevel

  config_rules.validate(cfg)
  imported = initial_weights.prepare_pretrained(cfg)  # they decide variant and preprocessing
  plan = make_plan(cfg, imported)
  print(format_plan(plan))
  print()
  print(terminal.block("run", describe(cfg, plan.rows, plan.length,
                                        initial_weights.describe(cfg.init, imported),
                                        plan.age_weights)))
  warning = fine_tune_warning(cfg, plan.rows)
  if warning:
    print(f"\n{warning}")
  out = write_plan(plan, workdir)
  figure = lr_plots.plot_lr_plan(plan, os.path.join(workdir, "plan_lr.png"),
                              title=run_config.title(cfg, workdir),
                              labels=group_labels(plan.rows))
  print(f"\nplan written to {out}; learning rates plotted in {figure}")
  return out
