"""Start-up validation of a training config: every owner's rules, in a fixed order.

A rule on a config value lives with the module that owns the choice; this
module only collects them. To find the rule of a key, grep its dotted name.
Keys and types come first (:mod:`agejax.config.config_check`, with its "did
you mean"), then each owner's ``check(config)``: the dataset's name, the
benchmark split, the input normalisation, the backbone, the head, the run's
length, the loop's intervals, the checkpoints kept, the optimizer, the
schedule's name, the initial weights and the loss weighting. Rules that
need the dataset, the parameter paths, the run's length or the devices are
checked by the same owners once those are known, still before anything
compiles.
"""

from __future__ import annotations

import ml_collections

from agejax import models
from agejax.config import config_check
from agejax.data import augment
from agejax.data import catalog
from agejax.data import exclusions
from agejax.data import folders
from agejax.models import heads
from agejax.train import cadence
from agejax.train import initial_weights
from agejax.train import loss_weights
from agejax.train import optim
from agejax.train import run_length
from agejax.train import schedules
from agejax.workdir import checkpointing

OWNERS = (catalog, folders, exclusions, augment, models, heads, run_length, cadence, checkpointing,
          optim, schedules, initial_weights, loss_weights)


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks keys, types and every owner's rules; returns the config for chaining."""
  config_check.check_keys_and_types(cfg)
  for owner in OWNERS:
    owner.check(cfg)
  return cfg
