"""A trained network back from a workdir: config, structure and weights."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from agejax import checkpointing
from agejax import models
from agejax import train


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


def resolve_step(ckpt: checkpointing.Checkpointer, which: str) -> int:
  """``best``, ``latest`` or a step number -> an existing checkpoint step."""
  steps = ckpt.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
  if which == "latest":
    return max(steps)
  if which == "best":
    best = ckpt.best_step()
    return best if best is not None else max(steps)
  if not which.isdigit() or int(which) not in steps:
    raise ValueError(f"checkpoint {which!r}: use best, latest or one of {sorted(steps)}")
  return int(which)


def load_trained(workdir: str, which: str = "best") -> TrainedModel:
  """The network of ``workdir``'s checkpoint ``which`` (best, latest or a step)."""
  cfg = train.load_run_config(workdir)
  with checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    step = resolve_step(ckpt, which)
    stored = ocp.PyTreeCheckpointer().restore(os.path.join(ckpt.directory, str(step), "state"))
  graphdef = models.split_state(nnx.eval_shape(
      lambda: models.build_model(cfg.model, cfg.data.image_size, nnx.Rngs(0))))[0]
  params = stored["ema_params"] if stored.get("ema_params") else stored["params"]
  to_device = lambda tree: jax.tree.map(jax.numpy.asarray, tree)
  return TrainedModel(cfg, step, graphdef, to_device(params), to_device(stored["batch_stats"] or {}))
