"""How long a run is: steps per epoch and total optimizer steps."""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from agejax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RunLength:
  num_train_examples: int
  steps_per_epoch: int
  total_steps: int


def run_length(cfg: ml_collections.ConfigDict, num_train_examples: int) -> RunLength:
  """Resolves train.num_epochs / train.num_train_steps into optimizer steps.

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
  return RunLength(num_train_examples, steps_per_epoch, int(total))
