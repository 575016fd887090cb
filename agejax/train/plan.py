"""The plan: where every parameter lands in the optimizer, before any step runs.

``python -m agejax.main --dry_run`` resolves the config, builds the model's
parameter shapes (nothing is allocated) and the optimizer, and reports one row
per parameter: its group, learning-rate and weight-decay multipliers and
whether it is frozen, plus the learning rate each group gets over the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from agejax import models
from agejax.errors import ConfigError
from agejax.models import paths
from agejax.train import length as length_lib
from agejax.train import schedules
from agejax.train import setup


@dataclasses.dataclass(frozen=True)
class PlanRow:
  path: str
  shape: tuple[int, ...]
  group: str
  lr_mult: float
  wd_mult: float
  frozen: bool

  @property
  def size(self) -> int:
    return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class Plan:
  rows: tuple[PlanRow, ...]
  length: length_lib.RunLength
  # (step, {group: learning rate}) at the milestones of the schedule.
  lr_milestones: tuple[tuple[int, dict[str, float]], ...]
  optimizer_state_floats: int
  # The base learning rate along the run (steps, lr); a group's is lr_mult x.
  lr_curve: tuple[np.ndarray, np.ndarray]
  group_lr_mults: dict[str, float]

  @property
  def trainable(self) -> int:
    return sum(r.size for r in self.rows if not r.frozen)

  @property
  def frozen(self) -> int:
    return sum(r.size for r in self.rows if r.frozen)


def num_train_examples(cfg: ml_collections.ConfigDict) -> int:
  """The training-set size the schedule is laid out for."""
  if cfg.data.num_train_examples > 0:
    return cfg.data.num_train_examples
  from agejax.data import pipeline as input_pipeline  # TensorFlow only when the dataset is read

  try:
    return input_pipeline.num_examples(cfg.data, cfg.data.train_split)
  except ConfigError as e:
    raise ConfigError(
        "data.num_train_examples",
        f"is 0 and the size of {cfg.data.dataset}:{cfg.data.train_split} cannot be "
        f"read ({e}); build the dataset or set the number of training examples") from e


def abstract_params(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The model's parameter tree as shapes only (no memory is allocated)."""
  shapes = models.param_shapes(cfg.model, cfg.data.image_size)
  return paths.unflatten(
      {p: jax.ShapeDtypeStruct(tuple(s), jnp.float32) for p, s in shapes.items()})


def _network_order(path: str) -> tuple:
  """Sort key: input to output (stem, stages, fc layers, head), numbers numerically."""
  top = path.split("/", 1)[0]
  rank = {"stem": 0, "head": 3}.get(top, 2 if top.startswith("fc") else 1)
  natural = tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path))
  return rank, natural


def _milestones(total_steps: int, warmup_steps: int) -> list[int]:
  steps = {0, warmup_steps, total_steps // 4, total_steps // 2,
           (3 * total_steps) // 4, total_steps}
  return sorted(s for s in steps if 0 <= s <= total_steps)


def make_plan(cfg: ml_collections.ConfigDict) -> Plan:
  """Builds the plan; raises ConfigError on anything the run would trip on."""
  length = length_lib.run_length(cfg, num_train_examples(cfg))
  params = abstract_params(cfg)
  # The trainer's own set-up: the same optimizer and schedule, counted in
  # updates, so the plan is the run (gradient accumulation included).
  statics = setup.build_step_fns(cfg, length)
  assignments = statics.assignments
  shapes = {p: tuple(x.shape) for p, x in paths.flatten(params).items()}
  rows = tuple(
      PlanRow(path=p, shape=shapes[p], group=a.group, lr_mult=a.lr_mult,
              wd_mult=a.wd_mult, frozen=a.frozen)
      for p, a in sorted(assignments.items(), key=lambda kv: _network_order(kv[0])))

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
  milestones = tuple(
      (step, {g: float(statics.schedule(length.update_of_step(step))) * m
              for g, m in group_mults.items()})
      # The first step at the peak: the one after the last warm-up update.
      for step in _milestones(length.total_steps, warmup * length.grad_accum_steps + 1))
  curve_steps = np.unique(np.linspace(0, length.total_steps, 400).astype(np.int64))
  updates = np.asarray([length.update_of_step(s) for s in curve_steps])
  curve = (curve_steps, np.asarray(jax.vmap(statics.schedule)(jnp.asarray(updates))))
  return Plan(rows, length, milestones, state_floats, curve, group_mults)


def plan_records(plan: Plan) -> list[dict[str, Any]]:
  """The rows of plan.json: path, shape, group, lr_mult, wd_mult, frozen."""
  return [
      dict(path=r.path, shape=list(r.shape), group=r.group, lr_mult=r.lr_mult,
           wd_mult=r.wd_mult, frozen=r.frozen)
      for r in plan.rows
  ]


def write_plan(plan: Plan, workdir: str) -> str:
  os.makedirs(workdir, exist_ok=True)
  out = os.path.join(workdir, "plan.json")
  with open(out, "w") as f:
    json.dump(plan_records(plan), f, indent=1)
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
      ("path", "shape", "group", "lr_mult", "wd_mult", "frozen"),
      [(r.path, "x".join(map(str, r.shape)) or "scalar", r.group, _fmt_mult(r.lr_mult),
        _fmt_mult(r.wd_mult), "yes" if r.frozen else "")
       for r in plan.rows])
  groups: dict[str, list[PlanRow]] = {}
  for r in plan.rows:
    groups.setdefault(r.group, []).append(r)
  summary = _table(
      ("group", "tensors", "params", "trainable", "frozen"),
      [(g, len(rs), f"{sum(r.size for r in rs):,}",
        f"{sum(r.size for r in rs if not r.frozen):,}",
        f"{sum(r.size for r in rs if r.frozen):,}") for g, rs in groups.items()])
  lr_groups = sorted({g for _, lrs in plan.lr_milestones for g in lrs})
  lrs = _table(
      ("step", "epoch") + tuple(f"lr[{g}]" for g in lr_groups),
      [(s, f"{s / plan.length.steps_per_epoch:.2f}") +
       tuple(f"{lr.get(g, 0.0):.3g}" for g in lr_groups)
       for s, lr in plan.lr_milestones])
  n = plan.length
  return "\n\n".join([
      params, summary,
      f"trainable parameters: {plan.trainable:,}   frozen: {plan.frozen:,}   "
      f"optimizer state: {plan.optimizer_state_floats:,} floats",
      f"run: {n.total_steps:,} steps = {n.total_steps / n.steps_per_epoch:.2f} epochs "
      f"of {n.steps_per_epoch:,} steps ({n.num_train_examples:,} examples)",
      lrs,
  ])


def dry_run(cfg: ml_collections.ConfigDict, workdir: str) -> str:
  """Validates ``cfg``, prints the plan and writes it; returns plan.json's path."""
  from agejax.config import validation  # pylint: disable=import-outside-toplevel
  from agejax.train import initial_weights  # pylint: disable=import-outside-toplevel
  from agejax.train import plots  # pylint: disable=import-outside-toplevel

  validation.validate(cfg)
  initial_weights.prepare_pretrained(cfg)  # the weights decide variant and preprocessing
  plan = make_plan(cfg)
  print(format_plan(plan))
  out = write_plan(plan, workdir)
  figure = plots.plot_lr_plan(plan, os.path.join(workdir, "plan_lr.png"))
  print(f"\nplan written to {out}; learning rates plotted in {figure}")
  return out
