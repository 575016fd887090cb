"""How long a run is: steps per epoch, total steps, and the optimizer updates in them."""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from agejax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RunLength:
  """A run's length in micro-batch steps and in optimizer updates.

  A step is one batch through the network; with ``optim.grad_accum_steps``
  = k > 1 the optimizer (and so every schedule) advances once per k steps.
  """
  num_train_examples: int
  steps_per_epoch: int
  total_steps: int
  grad_accum_steps: int = 1

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


def run_length(cfg: ml_collections.ConfigDict, num_train_examples: int) -> RunLength:
  """Resolves train.num_epochs / train.num_train_steps into steps.

  An epoch is ``num_train_examples // batch_size`` steps (the last partial
  batch is dropped, as the input pipeline does).
  """
  batch = cfg.train.batch_size
  if num_train_examples < batch:
    raise ConfigError(
        "train.batch_size",
        f"{batch} is larger than the {num_train_examples} training examples")
  steps_per_epoch = num_train_examples // batch
  total = cfg.train.num_train_steps or math.ceil(cfg.train.num_epochs * steps_per_epoch)
  return RunLength(num_train_examples, steps_per_epoch, int(total),
                   int(cfg.optim.grad_accum_steps))
