"""What a run is built from: the step's structure and optimizer, and the first state.

The trainer, the plan (``--dry_run``), the LR range test and the step
benchmark all call these two functions, so what the plan shows is what the
run does. Nothing here imports TensorFlow (a ``train.loss_weighting`` other than
``none`` reads the training labels through tf.data).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding

from agejax import models
from agejax.train import initial_weights
from agejax.train import loss_weights
from agejax.train import run_length
from agejax.train import optim
from agejax.train import steps


def build_step_fns(cfg: ml_collections.ConfigDict, length: run_length.RunLength,
                   sweep: Any = None) -> steps.StepStatics:
  """The model's structure and the optimizer, from shapes alone.

  The optimizer and its schedule count updates, not micro-batches.
  ``sweep`` replaces the base schedule ``optim.schedule`` describes
  (:func:`agejax.train.optim.learning_rates`).
  """
  abstract = models.abstract_model(cfg.model, cfg.data.image_size)
  _, abstract_params, _ = models.split_state(abstract)
  assignments = optim.assign_groups(cfg.optim, abstract_params)
  # Groups with bn="frozen" (frozen groups by default) keep their statistics.
  models.freeze_batch_norm(abstract, optim.frozen_batch_norm(assignments))
  graphdef = models.split_state(abstract)[0]
  rates = optim.learning_rates(cfg.optim, length, assignments, sweep)
  return steps.StepStatics(
      graphdef=graphdef,
      tx=optim.build_optimizer(cfg.optim, abstract_params, rates),
      learning_rates=rates,
      assignments=assignments,
      ema_decay=float(cfg.optim.ema_decay),
      grad_accum_steps=length.grad_accum_steps,
      age_weights=loss_weights.for_run(cfg))


def create_train_state(cfg: ml_collections.ConfigDict, statics: steps.StepStatics,
                       replicated: NamedSharding, load_weights: bool = True,
                       imported: Any = None) -> steps.TrainState:
  """A fresh state (with ``init.*`` weights when ``load_weights``), replicated."""
  init_key, state_key = jax.random.split(jax.random.key(cfg.seed))

  def init_model(key):  # under jit: eager NNX init would compile op by op
    model = models.build_model(cfg.model, cfg.data.image_size, nnx.Rngs(key))
    return models.split_state(model)[1:]

  params, batch_stats = jax.jit(init_model)(init_key)
  if load_weights:
    params, batch_stats = initial_weights.load_initial_weights(
        cfg.init, params, batch_stats, imported)
  init = functools.partial(steps.init_state, statics, ema=cfg.optim.ema_decay > 0)
  return jax.jit(init, out_shardings=replicated)(params, batch_stats, state_key)
