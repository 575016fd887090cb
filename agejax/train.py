"""The training loop: ``train_and_evaluate(config, workdir)``.

One jit-compiled step over a mesh of every device (batch sharded on ``data``,
state replicated), orbax checkpoints with exact resume, clu metrics to
TensorBoard and ``metrics.jsonl``, periodic evaluation, best-checkpoint
selection and early stopping. Process 0 alone writes summaries; every process
takes part in checkpointing.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metrics as clu_metrics
from clu import periodic_actions
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from agejax import checkpointing
from agejax import config as config_lib
from agejax import config_check
from agejax import datasets
from agejax import initialization
from agejax import input_pipeline
from agejax import length as length_lib
from agejax import metric_io
from agejax import models
from agejax import optim
from agejax import schedules
from agejax import steps
from agejax.errors import ConfigError


CONFIG_FILE = "config.json"


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in ``workdir`` trained with."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not an agejax training workdir")
  with open(path) as f:
    return config_lib.from_json(f.read())


class TrainingDiverged(RuntimeError):
  """The loss became NaN or Inf; nothing was checkpointed from that state."""


def make_mesh() -> Mesh:
  """All devices of all processes on one data-parallel axis."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def build_step_fns(cfg: ml_collections.ConfigDict, length: length_lib.RunLength,
                   schedule: Any = None) -> steps.StepFns:
  """The model's structure and the optimizer, from shapes alone.

  ``schedule`` replaces the base learning rate ``optim.schedule`` describes.
  """
  graphdef, abstract_params, _ = models.split_state(nnx.eval_shape(
      lambda: models.build_model(cfg.model, cfg.data.image_size, nnx.Rngs(0))))
  accum = cfg.optim.grad_accum_steps
  # The optimizer and its schedule count updates, not micro-batches.
  updates_per_epoch = max(1, length.steps_per_epoch // accum)
  total_updates = max(1, length.total_steps // accum)
  if schedule is None:
    schedule = schedules.build_schedule(cfg.optim.schedule, cfg.optim.lr,
                                        updates_per_epoch, total_updates)
  return steps.StepFns(
      graphdef=graphdef,
      tx=optim.build_optimizer(cfg.optim, abstract_params, updates_per_epoch, total_updates,
                               schedule),
      schedule=schedule,
      assignments=optim.assign_groups(cfg.optim, abstract_params),
      ema_decay=float(cfg.optim.ema_decay),
      grad_accum_steps=accum)


def create_train_state(cfg: ml_collections.ConfigDict, fns: steps.StepFns,
                       replicated: NamedSharding, load_weights: bool = True,
                       imported: Any = None) -> steps.TrainState:
  """A fresh state (with ``init.*`` weights when ``load_weights``), replicated."""
  init_key, state_key = jax.random.split(jax.random.key(cfg.seed))

  def init_model(key):  # under jit: eager NNX init would compile op by op
    model = models.build_model(cfg.model, cfg.data.image_size, nnx.Rngs(key))
    return models.split_state(model)[1:]

  params, batch_stats = jax.jit(init_model)(init_key)
  if load_weights:
    params, batch_stats = initialization.load_initial_weights(
        cfg.init, params, batch_stats, imported)
  init = functools.partial(steps.init_state, fns, ema=cfg.optim.ema_decay > 0)
  return jax.jit(init, out_shardings=replicated)(params, batch_stats, state_key)


class _Preemption:
  """Remembers a SIGTERM so the loop can save and exit at a step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint at the next step boundary")
    self.requested = True

  def agreed(self) -> bool:
    """True on every process once any process was asked to stop."""
    if jax.process_count() == 1:
      return self.requested
    return bool(multihost_utils.process_allgather(np.asarray(self.requested)).any())

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _average(accumulated: dict[str, clu_metrics.Average] | None,
             new: dict[str, jax.Array]) -> dict[str, clu_metrics.Average]:
  merged = {k: clu_metrics.Average.from_model_output(v) for k, v in new.items()}
  if accumulated is None:
    return merged
  return {k: accumulated[k].merge(merged[k]) for k in merged}


def evaluate(fns: steps.StepFns, state: steps.TrainState, cfg: ml_collections.ConfigDict,
             split: str, data_sharding: NamedSharding, eval_fn) -> dict[str, float]:
  """Metrics of ``state`` over every example of ``split`` (all processes)."""
  dataset = input_pipeline.create_split(
      cfg.data, cfg.model, split, train=False, batch_size=cfg.train.batch_size, seed=cfg.seed)
  totals = None
  for batch in input_pipeline.device_batches(dataset, data_sharding, cfg.data.prefetch):
    sums = eval_fn(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return steps.finalize_eval(jax.device_get(totals))


def update_progress(progress: dict[str, Any], metric: float) -> dict[str, Any]:
  """Best validation metric so far (lower is better) and evaluations since it."""
  if progress["best"] is None or metric < progress["best"]:
    return {"best": metric, "evals_since_best": 0}
  return {**progress, "evals_since_best": progress["evals_since_best"] + 1}


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str,
                       step_hook: Callable[[int], None] | None = None,
                       eval_hook: Callable[[int, dict[str, float]], None] | None = None
                       ) -> dict[str, Any]:
  """Trains ``cfg`` in ``workdir`` (resuming what is there); returns a summary.

  ``step_hook(step)`` runs after every step on the host (tests use it to
  deliver a SIGTERM at a chosen step); ``eval_hook(step, metrics)`` after
  every evaluation and its checkpoint (hyperparameter search reports there,
  and may stop the run by raising).
  """
  config_check.validate(cfg)
  imported = initialization.prepare_pretrained(cfg)
  mesh = make_mesh()
  if cfg.train.batch_size % mesh.size:
    raise ConfigError("train.batch_size", f"{cfg.train.batch_size} does not divide "
                      f"evenly over {mesh.size} devices")
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P("data"))
  is_chief = jax.process_index() == 0

  datasets.ensure_prepared(cfg.data)
  num_train = cfg.data.num_train_examples or input_pipeline.num_examples(
      cfg.data, cfg.data.train_split)
  length = length_lib.run_length(cfg, num_train)
  fns = build_step_fns(cfg, length)

  ckpt = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep_last=cfg.train.keep_checkpoints,
      keep_best=cfg.train.keep_best, best_metric=cfg.train.best_metric, best_mode="min")
  progress_state = {"best": None, "evals_since_best": 0}
  latest = ckpt.latest_step()
  state = create_train_state(cfg, fns, replicated, load_weights=latest is None,
                             imported=imported)
  if latest is not None:
    state, extra = ckpt.restore(latest, checkpointing.abstract_like(state))
    progress_state = extra.get("progress", progress_state)
    logging.info("resumed from step %d in %s", latest, ckpt.directory)

  if is_chief:
    # The resolved config (with the pretrained weights' model keys): what
    # evaluate, predict and export rebuild the network from.
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
      f.write(cfg.to_json_best_effort(indent=1))
  writer = metric_io.create_writer(workdir, is_chief)
  if latest is None:
    writer.write_hparams(_flat_hparams(cfg))
  train_fn = jax.jit(steps.bind(fns, steps.train_step), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(steps.eval_step, fns, use_ema=cfg.optim.ema_decay > 0))

  step = first_step = int(jax.device_get(state.step))
  total = length.total_steps
  eval_every = cfg.train.eval_every_steps or length.steps_per_epoch
  ckpt_every = cfg.train.checkpoint_every_steps or eval_every
  hooks = []
  if is_chief:
    # Logs steps/s and ETA; the metrics' steps_per_sec is measured by the loop.
    hooks.append(periodic_actions.ReportProgress(num_train_steps=total))
    if cfg.train.profile:
      hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5))

  train_iter = input_pipeline.device_batches(
      input_pipeline.create_split(cfg.data, cfg.model, cfg.data.train_split, train=True,
                                  batch_size=cfg.train.batch_size, seed=cfg.seed,
                                  start_step=step),
      data_sharding, cfg.data.prefetch)
  preemption = _Preemption()
  accumulated = None
  wait_time, interval_start, interval_step = 0.0, time.perf_counter(), step
  summary: dict[str, Any] = {"stopped": "completed"}
  last_eval: dict[str, float] = {}

  def save(at_step, metrics=None):
    ckpt.save(at_step, state, extra={"step": at_step, "progress": progress_state},
              metrics=metrics)

  try:
    while step < total:
      t0 = time.perf_counter()
      batch = next(train_iter)
      wait_time += time.perf_counter() - t0
      state, step_metrics = train_fn(state, batch)
      accumulated = _average(accumulated, step_metrics)
      step += 1
      if step == first_step + 1:
        # Compilation is not training speed: time from the first finished step.
        jax.block_until_ready(state)
        wait_time, interval_start, interval_step = 0.0, time.perf_counter(), step
      for hook in hooks:
        hook(step)
      if step_hook is not None:
        step_hook(step)

      if step % cfg.train.log_every_steps == 0 or step == total:
        values = {k: float(v.compute()) for k, v in jax.device_get(accumulated).items()}
        accumulated = None
        if not math.isfinite(values["loss"]):
          raise TrainingDiverged(
              f"non-finite training loss ({values['loss']}) at step {step}; last good "
              f"checkpoint: {ckpt.latest_step()} in {ckpt.directory}")
        elapsed = time.perf_counter() - interval_start
        done = step - interval_step
        if done:  # none when the interval held only the compiling first step
          values.update({
              "steps_per_sec": done / elapsed,
              "images_per_sec": done * cfg.train.batch_size / elapsed,
              "data_wait_fraction": wait_time / elapsed,
          })
        writer.write_scalars(step, {f"train/{k}": v for k, v in values.items()})
        wait_time, interval_start, interval_step = 0.0, time.perf_counter(), step

      pause_start = time.perf_counter()
      evaluated = step % eval_every == 0 or step == total
      if evaluated:
        last_eval = evaluate(fns, state, cfg, cfg.data.eval_split, data_sharding, eval_fn)
        writer.write_scalars(step, {f"validation/{k}": v for k, v in last_eval.items()})
        progress_state = update_progress(progress_state, last_eval[cfg.train.best_metric])
      if step % ckpt_every == 0 or step == total:
        save(step, last_eval if evaluated else None)
      if evaluated and eval_hook is not None:
        eval_hook(step, last_eval)
      # Evaluation and checkpointing are not training time.
      interval_start += time.perf_counter() - pause_start
      patience = cfg.train.early_stop_patience
      if evaluated and patience and progress_state["evals_since_best"] >= patience:
        summary["stopped"] = f"early stopping: no improvement in {patience} evaluations"
        if step % ckpt_every:
          save(step, last_eval)
        break
      # Agreeing across hosts is a collective: do it only at logging steps.
      may_sync = jax.process_count() == 1 or step % cfg.train.log_every_steps == 0
      if may_sync and preemption.agreed():
        summary["stopped"] = "preempted"
        if step % ckpt_every:
          save(step, last_eval if evaluated else None)
        break
  finally:
    preemption.restore()
    train_iter.close()
    ckpt.wait()
    writer.flush()

  # Identical on every process when the replicas agree (multi-host tests read it).
  checksum = float(jax.device_get(sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(state.params))))
  summary.update(step=step, best=progress_state["best"], best_step=ckpt.best_step(),
                 validation=last_eval, param_checksum=checksum)
  logging.info("%s at step %d; best validation %s %s (step %s); parameter checksum %.9g",
               summary["stopped"], step, cfg.train.best_metric, progress_state["best"],
               ckpt.best_step(), checksum)
  return summary


def _flat_hparams(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Dotted keys to scalars (sequences such as groups as text) for TensorBoard."""
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v)
          for k, v in config_check.leaves(cfg)}
