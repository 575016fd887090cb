"""A trained network back from a workdir: config, structure and weights."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
from flax import nnx

from agejax import models
from agejax.workdir import checkpointing
from agejax.workdir import run_config

@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """What inference needs: no optimizer state, no input pipeline."""
  config: ml_collections.ConfigDict
  step: int
  graphdef: Any
  params: Any  # the EMA parameters when the run kept an EMA
  batch_stats: Any

  def module(self) -> nnx.Module:
    return models.merge_state(self.graphdef, self.params, self.batch_stats)


def checkpointer(workdir: str, **options: Any) -> checkpointing.Checkpointer:
  """The run's checkpointer: ``WORKDIR/checkpoints``."""
  return checkpointing.Checkpointer(os.path.join(workdir, checkpointing.CHECKPOINTS_DIR), **options)


def evaluated_params(stored: dict[str, Any]) -> Any:
  """The weights a run evaluates: its EMA when it kept one, else its parameters."""
  return stored["ema_params"] if stored.get("ema_params") else stored["params"]


def load_trained(workdir: str, which: str = "best") -> TrainedModel:
  """The network of ``workdir``'s checkpoint ``which`` (best, latest or a step)."""
  cfg = run_config.load(workdir)
  with checkpointer(workdir) as ckpt:
    step = ckpt.resolve(which)
    stored = ckpt.restore_params(step)
  graphdef = models.split_state(models.abstract_model(cfg.model, cfg.data.image_size))[0]
  to_device = lambda tree: jax.tree.map(jax.numpy.asarray, tree)
  return TrainedModel(cfg, step, graphdef, to_device(evaluated_params(stored)),
                      to_device(stored["batch_stats"] or {}))
