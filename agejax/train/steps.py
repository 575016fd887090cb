"""The train state and the pure train step.

Evaluation is not here: validation runs the one inference forward pass,
``agejax.evaluation.predictions``, as ``agejax.evaluate`` does.

Everything here is a pure function of arrays, compiled once by the trainer
with ``jax.jit`` over a mesh whose ``data`` axis shards the batch while the
state is replicated. BatchNorm then normalises with the statistics of the
global batch (XLA inserts the all-reduce): synchronised BN, with no code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from agejax import models
from agejax.train import loss_weights
from agejax.train import optim
from agejax.models import paths

CS_YEARS = 5  # the CS@k reported while training (fraction within k years)
# Metric name prefixes of the per-block diagnostics (``block_update_ratio/stage3``).
BLOCK_UPDATE_RATIO = "block_update_ratio"
BLOCK_GRAD_NORM = "block_grad_norm"


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # micro-batches done (= optimizer updates x grad_accum_steps)
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # {} when optim.ema_decay == 0
  rng: jax.Array  # raw uint32 key data: portable across checkpoints


@dataclasses.dataclass(frozen=True)
class StepStatics:
  """What the steps close over: static structure, never traced."""
  graphdef: Any
  tx: optax.GradientTransformation
  learning_rates: optim.LearningRates
  assignments: dict[str, optim.Assignment]
  ema_decay: float
  grad_accum_steps: int
  # train.loss_weighting's table; None: every example weighs 1.
  age_weights: loss_weights.AgeWeights | None = None


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _trainable_norms(tree: Any, assignments: dict[str, optim.Assignment],
                     key: Callable[[str, optim.Assignment], str]) -> dict[str, jax.Array]:
  """L2 norm of the trainable leaves of ``tree`` grouped by ``key(path, assignment)``."""
  squares: dict[str, jax.Array] = {}
  for path, leaf in paths.flatten(tree).items():
    a = assignments[path]
    if not a.frozen:
      name = key(path, a)
      squares[name] = squares.get(name, 0.0) + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return {g: jnp.sqrt(s) for g, s in squares.items()}


def _by_group(path: str, a: optim.Assignment) -> str:
  del path
  return a.group


def _by_block(path: str, a: optim.Assignment) -> str:
  del a
  return paths.block_of(path)


def _update_ratios(updates: Any, params: Any, assignments: dict[str, optim.Assignment],
                   key: Callable[[str, optim.Assignment], str]) -> dict[str, jax.Array]:
  """|update| / |params| per ``key``: how fast each part of the network moves."""
  update_norms = _trainable_norms(updates, assignments, key)
  param_norms = _trainable_norms(params, assignments, key)
  return {k: n / jnp.maximum(param_norms[k], 1e-12) for k, n in update_norms.items()}


def _split_frozen(params: Any, assignments: dict[str, optim.Assignment]
                  ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Flat ``(trainable, frozen)`` parameter dicts by the optimizer's assignments."""
  trainable, frozen = {}, {}
  for path, leaf in paths.flatten(params).items():
    (frozen if assignments[path].frozen else trainable)[path] = leaf
  return trainable, frozen


def init_state(statics: StepStatics, params: Any, batch_stats: Any, rng: jax.Array,
               ema: bool) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=statics.tx.init(params),
      ema_params=jax.tree.map(jnp.copy, params) if ema else {},
      rng=jax.random.key_data(rng))


def train_step(statics: StepStatics, state: TrainState, batch: dict[str, jax.Array]
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One micro-batch: forward, backward, optimizer update, EMA.

  Returns the new state and this step's scalar metrics (device arrays; the
  trainer fetches them only at logging intervals).
  """
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  mask = batch.get("mask", jnp.ones_like(batch["age"]))

  # Frozen parameters enter the forward pass as constants: only the trainable
  # ones are differentiated, so XLA drops their weight gradients and every
  # input gradient below the lowest trainable layer.
  trainable, frozen = _split_frozen(state.params, statics.assignments)

  def loss_fn(trainable_params):
    params = paths.unflatten({**frozen, **trainable_params})
    model = models.merge_state(statics.graphdef, params, state.batch_stats)
    outputs = model(batch["image"], train=True, dropout_rng=key)
    per_example = model.head.loss(outputs, batch["age"])
    if statics.age_weights is not None:
      per_example = per_example * statics.age_weights.of(batch["age"])
    loss = _masked_mean(per_example, mask)
    age, _ = model.head.predict(outputs)
    return loss, (models.split_state(model)[2], age)

  (loss, (batch_stats, age)), trainable_grads = jax.value_and_grad(
      loss_fn, has_aux=True)(trainable)
  # The optimizer takes the whole tree; its frozen partition ignores these zeros.
  grads = paths.unflatten({**{p: jnp.zeros_like(v) for p, v in frozen.items()},
                           **trainable_grads})
  updates, opt_state = statics.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  ema = state.ema_params
  if statics.ema_decay > 0:
    # With gradient accumulation the parameters change only on the last
    # micro-batch of each update; the EMA must follow updates, not batches.
    updated = (state.step + 1) % statics.grad_accum_steps == 0
    new_ema = optim.ema_update(ema, params, statics.ema_decay)
    ema = jax.tree.map(lambda n, o: jnp.where(updated, n, o), new_ema, ema)

  errors = jnp.abs(age - batch["age"])
  metrics = {
      "loss": loss,
      "mae": _masked_mean(errors, mask),
      f"cs{CS_YEARS}": _masked_mean((errors <= CS_YEARS).astype(jnp.float32), mask),
      "grad_norm": optax.global_norm(grads),
  }
  # Per config group and, whatever the groups are, per network block: "is
  # stage3 learning?" needs no config edit. Computed here, fetched with the
  # other metrics at logging steps only.
  for group, ratio in _update_ratios(updates, state.params, statics.assignments,
                                     _by_group).items():
    metrics[f"update_ratio/{group}"] = ratio
  for block, ratio in _update_ratios(updates, state.params, statics.assignments,
                                     _by_block).items():
    metrics[f"{BLOCK_UPDATE_RATIO}/{block}"] = ratio
  for block, norm in _trainable_norms(grads, statics.assignments, _by_block).items():
    metrics[f"{BLOCK_GRAD_NORM}/{block}"] = norm
  for group, lr in statics.learning_rates.at(state.step // statics.grad_accum_steps).items():
    metrics[f"lr/{group}"] = lr
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats,
      opt_state=opt_state, ema_params=ema)
  return new_state, metrics


def bind(statics: StepStatics, fn: Callable, **static) -> Callable:
  """``fn`` with its structure and static options closed over, for jax.jit."""
  return lambda *args: fn(statics, *args, **static)
