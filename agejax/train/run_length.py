"""How long a run is: steps per epoch, total steps, the optimizer updates in them,
and the phases of a batch-size or image-size schedule.

``train.batch_size_schedule`` and ``data.image_size_schedule`` are lists of
``(epoch, value)``: from that epoch on, the global batch (or the input side)
is the value; before the first entry it is ``train.batch_size`` (or
``data.image_size``). Every epoch at which either changes starts a phase.
A phase of E epochs at batch B has ``ceil(E * (N // B))`` steps, as a run
without phases has ``ceil(num_epochs * (N // B))``, so one phase is exactly
the run of old. The example stream does not restart at a phase change: the
next phase reads on from the example the last one stopped at.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import ml_collections

from agejax.config import config_check
from agejax.errors import ConfigError

LR_SCALINGS = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}  # lr x (batch / train.batch_size)^p

RULES: dict[str, config_check.Rule] = {
    "train.batch_size": config_check.POSITIVE,
    "train.num_epochs": config_check.NON_NEGATIVE,
    "train.num_train_steps": config_check.NON_NEGATIVE,
    "data.num_train_examples": config_check.NON_NEGATIVE,
    "optim.grad_accum_steps": ((lambda v: v >= 1), "an integer >= 1"),
    "optim.lr_scaling": config_check.one_of(tuple(LR_SCALINGS)),
}


def check(cfg: ml_collections.ConfigDict) -> None:
  """The rules of the run's length and phases that need no training-set size."""
  config_check.check_rules(cfg, RULES)
  config_check.require("train.num_epochs",
                       cfg.train.num_epochs > 0 or cfg.train.num_train_steps > 0,
                       "> 0 unless train.num_train_steps is set", cfg.train.num_epochs)
  _phase_schedules(cfg)


@dataclasses.dataclass(frozen=True)
class Phase:
  """Steps ``[start_step, end_step)`` at one batch size and input side."""
  index: int
  start_step: int
  end_step: int
  start_epoch: float
  batch_size: int
  image_size: int
  lr_factor: float  # the learning rate's multiplier in this phase (optim.lr_scaling)
  start_example: int  # global examples read before the phase

  @property
  def steps(self) -> int:
    return self.end_step - self.start_step


@dataclasses.dataclass(frozen=True)
class RunLength:
  """A run's length in micro-batch steps and in optimizer updates.

  A step is one batch through the network; with ``optim.grad_accum_steps``
  = k > 1 the optimizer (and so every schedule) advances once per k steps.
  """
  num_train_examples: int
  steps_per_epoch: int  # at train.batch_size (the first phase's unless scheduled from 0)
  total_steps: int
  grad_accum_steps: int = 1
  # At least one; several with a batch-size or image-size schedule.
  phases: tuple[Phase, ...] = ()

  def phase_at(self, step: int) -> Phase:
    """The phase of step ``step`` (0-based: the next one to run; the last past the end)."""
    for phase in self.phases:
      if step < phase.end_step:
        return phase
    return self.phases[-1]

  def epoch_of_step(self, step: int) -> float:
    """Epochs done after ``step`` steps."""
    phase = self.phase_at(max(step - 1, 0))
    per_epoch = self.num_train_examples // phase.batch_size
    return phase.start_epoch + (step - phase.start_step) / per_epoch

  @property
  def total_epochs(self) -> float:
    return self.epoch_of_step(self.total_steps)

  def examples_before(self, step: int) -> int:
    """Global training examples the first ``step`` steps read."""
    phase = self.phase_at(step)
    return phase.start_example + (step - phase.start_step) * phase.batch_size

  @property
  def updates_per_epoch(self) -> int:
    return max(1, self.steps_per_epoch // self.grad_accum_steps)

  @property
  def total_updates(self) -> int:
    return max(1, self.total_steps // self.grad_accum_steps)

  def update_of_step(self, step: int) -> int:
    """The optimizer update the 1-based ``step`` contributes to (0-based).

    Step 0 (before training) reads as update 0: the schedule's first value.
    """
    return max(int(step) - 1, 0) // self.grad_accum_steps


def _schedule(entries: Sequence[Any], key: str, minimum: int,
              multiple_of: int = 1) -> list[tuple[float, int]]:
  """``(epoch, value)`` pairs, checked: epochs ascending from >= 0, integer values."""
  pairs = []
  for i, entry in enumerate(entries):
    if not isinstance(entry, (tuple, list)) or len(entry) != 2:
      raise ConfigError(f"{key}[{i}]", f"expected an (epoch, value) pair, got {entry!r}")
    epoch, value = entry
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not (
        math.isfinite(epoch) and epoch >= 0):
      raise ConfigError(f"{key}[{i}]", f"the epoch must be a number >= 0, got {epoch!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
        value % multiple_of):
      raise ConfigError(f"{key}[{i}]", f"the value must be an integer >= {minimum}"
                        f"{f' and a multiple of {multiple_of}' if multiple_of > 1 else ''}, "
                        f"got {value!r}")
    if pairs and epoch <= pairs[-1][0]:
      raise ConfigError(f"{key}[{i}]", f"epochs must increase: {epoch!r} after "
                        f"{pairs[-1][0]!r}")
    pairs.append((float(epoch), int(value)))
  return pairs


def _value_at(pairs: list[tuple[float, int]], epoch: float, default: int) -> int:
  value = default
  for start, v in pairs:
    if start <= epoch:
      value = v
  return value


def _check_batch(batch: int, num_train_examples: int, key: str) -> None:
  if num_train_examples < batch:
    raise ConfigError(key, f"{batch} is larger than the {num_train_examples} training examples")


def _phase_schedules(cfg: ml_collections.ConfigDict) -> tuple[list, list]:
  """The batch-size and image-size schedules as checked ``(epoch, value)`` pairs."""
  return (_schedule(cfg.train.batch_size_schedule, "train.batch_size_schedule", 1),
          _schedule(cfg.data.image_size_schedule, "data.image_size_schedule", 32, 32))


def batch_key(phase: Phase) -> str:
  """The config key that set ``phase``'s batch size, for errors about it."""
  return "train.batch_size" if phase.index == 0 else "train.batch_size_schedule"


def num_train_examples(cfg: ml_collections.ConfigDict) -> int:
  """The training-set size the run is laid out for: the key, else the built split's."""
  if cfg.data.num_train_examples > 0:
    return cfg.data.num_train_examples
  from agejax.data import input_pipeline  # TensorFlow only when the dataset is read

  try:
    return input_pipeline.num_examples(cfg.data, cfg.data.train_split)
  except ConfigError as e:
    raise ConfigError(
        "data.num_train_examples",
        f"is 0 and the size of {cfg.data.dataset}:{cfg.data.train_split} cannot be "
        f"read ({e}); build the dataset or set the number of training examples") from e


def run_length(cfg: ml_collections.ConfigDict, num_train_examples: int) -> RunLength:
  """Resolves train.num_epochs / train.num_train_steps (and the phases) into steps.

  An epoch is ``num_train_examples // batch_size`` steps (the last partial
  batch is dropped, as the input pipeline does).
  """
  batch = cfg.train.batch_size
  _check_batch(batch, num_train_examples, "train.batch_size")
  steps_per_epoch = num_train_examples // batch
  accum = int(cfg.optim.grad_accum_steps)
  batches, sizes = _phase_schedules(cfg)
  for i, (_, b) in enumerate(batches):
    _check_batch(b, num_train_examples, f"train.batch_size_schedule[{i}]")
  power = LR_SCALINGS[cfg.optim.lr_scaling]
  starts = sorted({0.0, *(e for e, _ in batches), *(e for e, _ in sizes)})
  end_epoch = math.inf if cfg.train.num_train_steps else float(cfg.train.num_epochs)
  step_limit = cfg.train.num_train_steps or math.inf
  phases: list[Phase] = []
  step = example = 0
  for i, start in enumerate(starts):
    if phases and (start >= end_epoch or step >= step_limit):
      break  # (the first phase always exists, if only of 0 steps)
    stop = min(starts[i + 1] if i + 1 < len(starts) else math.inf, end_epoch)
    b = _value_at(batches, start, batch)
    size = _value_at(sizes, start, cfg.data.image_size)
    per_epoch = num_train_examples // b
    n = step_limit - step if math.isinf(stop) else math.ceil((stop - start) * per_epoch)
    n = int(min(n, step_limit - step))
    phases.append(Phase(len(phases), step, step + n, start, b, size,
                        (b / batch) ** power, example))
    step, example = step + n, example + n * b
  return RunLength(num_train_examples, steps_per_epoch, step, accum, tuple(phases))
