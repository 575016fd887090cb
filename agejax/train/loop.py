"""The training loop: ``train_and_evaluate(config, workdir)``.

One jit-compiled step over a mesh of every device (batch sharded on ``data``,
state replicated), orbax checkpoints with exact resume, clu metrics to
TensorBoard and ``metrics.jsonl``, periodic evaluation, best-checkpoint
selection and early stopping. Process 0 alone writes summaries; every process
takes part in checkpointing.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metrics as clu_metrics
from clu import periodic_actions
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from agejax import device_mesh
from agejax.config import config_check
from agejax.data import catalog
from agejax.data import folders
from agejax.data import input_pipeline
from agejax.errors import ConfigError
from agejax.errors import CheckpointSaveFailed
from agejax.errors import TrainingDiverged
from agejax.errors import WorkdirInUse
from agejax.evaluation import predictions
from agejax.train import initial_weights
from agejax.models import paths
from agejax.train import console
from agejax.train import run_length
from agejax.train import planning
from agejax.train import step_state
from agejax.train import steps
from agejax.workdir import checkpointing
from agejax.workdir import run_lock
from agejax.workdir import metric_io
from agejax.workdir import restore
from agejax.workdir import run_config


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


def evaluate(forward_fn: Callable, state: steps.TrainState, cfg: ml_collections.ConfigDict,
             split: str, mesh: Any, max_examples: int = 0) -> dict[str, float]:
  """Metrics of ``state`` over every example of ``split`` (all processes).

  The weights, forward function, batch size and metrics are those of
  ``agejax.evaluate``: the number that picks the best checkpoint is the
  number it reports. ``max_examples`` > 0: a fixed subset of about that many
  (the train-eval split).
  """
  data = cfg.data.copy_and_resolve_references()
  data.eval_split = split
  rows = predictions.predict_split(
      forward_fn, restore.evaluated_params({"params": state.params,
                                            "ema_params": state.ema_params}),
      state.batch_stats, data, cfg.model, mesh, cfg.train.batch_size,
      max_examples=max_examples)
  return predictions.scalar_metrics(rows, with_std=bool(cfg.data.label_std))


def _check_finite(step: int, what: str, value: float, ckpt: checkpointing.Checkpointer) -> None:
  """Raises TrainingDiverged when ``value`` is NaN or Inf (one check, one exception type)."""
  if not math.isfinite(value):
    ckpt.wait()  # a finite checkpoint still being written is the last good one
    raise TrainingDiverged(step, f"{what} ({value})", ckpt.latest_step(), ckpt.directory)


def update_progress(progress: dict[str, Any], metric: float) -> dict[str, Any]:
  """Best validation metric so far (lower is better) and evaluations since it."""
  if progress["best"] is None or metric < progress["best"]:
    return {"best": metric, "evals_since_best": 0}
  return {**progress, "evals_since_best": progress["evals_since_best"] + 1}


def _lock_workdir(workdir: str) -> run_lock.WorkdirLock:
  """Process 0 takes the workdir's lock; every process learns whether it got it."""
  lock = run_lock.WorkdirLock(workdir, enabled=jax.process_index() == 0)
  refusal = None
  try:
    lock.acquire()
  except WorkdirInUse as e:
    refusal = e
  if jax.process_count() > 1:  # all processes stop together, none waits in a collective
    taken = multihost_utils.broadcast_one_to_all(np.int32(refusal is None))
    if not int(taken) and refusal is None:
      refusal = WorkdirInUse(workdir, "another run (process 0 holds the details)", lock.path)
  if refusal is not None:
    raise refusal
  return lock


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str,
                       step_hook: Callable[[int], None] | None = None,
                       eval_hook: Callable[[int, dict[str, float]], None] | None = None
                       ) -> dict[str, Any]:
  """Trains ``cfg`` in ``workdir`` (resuming what is there); returns a summary.

  ``step_hook(step)`` runs after every step on the host (tests use it to
  deliver a SIGTERM at a chosen step); ``eval_hook(step, metrics)`` after
  every evaluation and its checkpoint (hyperparameter search reports there,
  and may stop the run by raising).

  Raises:
    WorkdirInUse: another run trains in ``workdir`` (nothing was touched).
  """
  config_check.validate(cfg)
  lock = _lock_workdir(workdir)
  try:
    return _train_and_evaluate(cfg, workdir, lock, step_hook, eval_hook)
  finally:
    lock.release()


def _train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str,
                        lock: run_lock.WorkdirLock,
                        step_hook: Callable[[int], None] | None,
                        eval_hook: Callable[[int, dict[str, float]], None] | None
                        ) -> dict[str, Any]:
  imported = initial_weights.prepare_pretrained(cfg)
  mesh = device_mesh.data_parallel_mesh()
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P("data"))
  is_chief = jax.process_index() == 0

  catalog.ensure_prepared(cfg.data)
  folders.apply_protocol_split(cfg.data)  # before config.json: it records the folders
  num_train = cfg.data.num_train_examples or input_pipeline.num_examples(
      cfg.data, cfg.data.train_split)
  length = run_length.run_length(cfg, num_train)
  for phase in length.phases:
    if phase.batch_size % mesh.size:
      key = "train.batch_size" if phase.index == 0 else "train.batch_size_schedule"
      raise ConfigError(key, f"{phase.batch_size} does not divide evenly over "
                        f"{mesh.size} devices")
  statics = step_state.build_step_fns(cfg, length)

  ckpt = restore.checkpointer(
      workdir, keep_last=cfg.train.keep_checkpoints, keep_best=cfg.train.keep_best,
      best_metric=cfg.train.best_metric, best_mode="min")
  progress_state = {"best": None, "evals_since_best": 0}
  latest = ckpt.latest_step()
  state = step_state.create_train_state(cfg, statics, replicated, load_weights=latest is None,
                                   imported=imported)
  if latest is not None:
    state, extra = ckpt.restore(latest, checkpointing.abstract_like(state))
    progress_state = extra.get("progress", progress_state)
    logging.info("resumed from step %d in %s", latest, ckpt.directory)

  if is_chief:
    # The resolved config (with the pretrained weights' model keys): what
    # evaluate, predict and export rebuild the network from.
    run_config.save(cfg, workdir)
  writer = metric_io.create_writer(workdir, is_chief)
  if latest is None:
    writer.write_hparams(_flat_hparams(cfg))
  train_fn = jax.jit(steps.bind(statics, steps.train_step), donate_argnums=0)
  forward_fn = predictions.make_forward(statics.graphdef, bool(cfg.data.eval_flip_tta), mesh)

  step = first_step = int(jax.device_get(state.step))
  total = length.total_steps
  eval_every = cfg.train.eval_every_steps or length.steps_per_epoch
  ckpt_every = cfg.train.checkpoint_every_steps or eval_every
  hooks = []
  if is_chief and cfg.train.profile:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5))
  training_console = console.TrainingConsole(workdir, length, step, enabled=is_chief)
  rows = _plan_rows(cfg, statics, state, imported)
  training_console.start(_start_rows(cfg, rows, length, mesh, imported, workdir),
                planning.fine_tune_warning(cfg, rows), resumed_from=latest)
  train_eval_examples = min(cfg.train.train_eval_examples, num_train)

  def phase_batches(at_step):
    """The training stream of the phase of ``at_step``, from that step on."""
    phase = length.phase_at(at_step)
    data_cfg = ml_collections.ConfigDict(cfg.data.to_dict())
    data_cfg.image_size = phase.image_size
    if len(length.phases) > 1:
      logging.info("phase %d from step %d: batch %d, %d px, lr x%g", phase.index + 1,
                   at_step, phase.batch_size, phase.image_size, phase.lr_factor)
    return phase, input_pipeline.device_batches(
        input_pipeline.create_split(data_cfg, cfg.model, cfg.data.train_split, train=True,
                                    batch_size=phase.batch_size, seed=cfg.seed,
                                    start_example=length.examples_before(at_step)),
        data_sharding, cfg.data.prefetch, cfg.data, cfg.data.train_split)

  phase, train_iter = phase_batches(step)
  preemption = _Preemption()
  accumulated = None
  wait_time, interval_start, interval_step = 0.0, time.perf_counter(), step
  summary: dict[str, Any] = {"stopped": "completed"}
  last_eval: dict[str, float] = {}
  started = time.perf_counter()

  def check_loss(at_step):
    """Every step's loss since the last log is finite (one host sync)."""
    if accumulated is not None:
      _check_finite(at_step, "training loss",
                    float(jax.device_get(accumulated["loss"]).compute()), ckpt)

  def save(at_step, metrics=None):
    check_loss(at_step)  # nothing of a diverged state is ever written
    ckpt.save(at_step, state, extra={"step": at_step, "progress": progress_state,
                                     "phase": length.phase_at(max(at_step - 1, 0)).index},
              metrics=metrics)

  try:
    while step < total:
      if step == phase.end_step:  # the next phase: its batch, its input side
        train_iter.close()
        phase, train_iter = phase_batches(step)
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
      ckpt.check()  # a failed background save stops the run at once, not at the next save
      for hook in hooks:
        hook(step)
      training_console.advance(step)
      if step_hook is not None:
        step_hook(step)

      if step % cfg.train.log_every_steps == 0 or step == total:
        values = {k: float(v.compute()) for k, v in jax.device_get(accumulated).items()}
        accumulated = None
        elapsed = time.perf_counter() - interval_start
        done = step - interval_step
        if done:  # none when the interval held only the compiling first step
          values.update({
              "steps_per_sec": done / elapsed,
              "images_per_sec": (length.examples_before(step) -
                                 length.examples_before(interval_step)) / elapsed,
              "data_wait_fraction": wait_time / elapsed,
          })
        # Written before the check: a diverged interval is on record for the report.
        writer.write_scalars(step, {f"train/{k}": v for k, v in values.items()})
        training_console.interval(step, values)
        lock.heartbeat()
        _check_finite(step, "training loss", values["loss"], ckpt)
        wait_time, interval_start, interval_step = 0.0, time.perf_counter(), step

      pause_start = time.perf_counter()
      evaluated = step % eval_every == 0 or step == total
      if evaluated:
        check_loss(step)
        last_eval = evaluate(forward_fn, state, cfg, cfg.data.eval_split, mesh)
        _check_finite(step, f"validation {cfg.train.best_metric}",
                      last_eval[cfg.train.best_metric], ckpt)
        writer.write_scalars(step, {f"validation/{k}": v for k, v in last_eval.items()})
        train_eval = None
        if train_eval_examples:
          train_eval = evaluate(forward_fn, state, cfg, cfg.data.train_split, mesh,
                                max_examples=train_eval_examples)
          writer.write_scalars(step, {f"train_eval/{k}": v for k, v in train_eval.items()})
        progress_state = update_progress(progress_state, last_eval[cfg.train.best_metric])
        training_console.evaluation(step, cfg.train.best_metric, last_eval, train_eval,
                           best=progress_state["evals_since_best"] == 0)
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
  except (TrainingDiverged, CheckpointSaveFailed) as e:
    if is_chief:
      kind = "diverged" if isinstance(e, TrainingDiverged) else "checkpoint save failed"
      _save_summary_if_possible({
          "stopped": f"{kind}: {e}", "step": e.step,
          "steps_per_epoch": length.steps_per_epoch, "total_steps": length.total_steps,
          "best": progress_state["best"], "best_step": ckpt.best_step(),
          "wall_seconds": time.perf_counter() - started}, workdir)
    raise
  finally:
    preemption.restore()
    train_iter.close()
    try:
      ckpt.wait()
    except CheckpointSaveFailed:
      if sys.exc_info()[0] is None:  # not while another failure is on its way out
        raise
    writer.flush()
    training_console.close()

  # Identical on every process when the replicas agree (multi-host tests read it).
  checksum = float(jax.device_get(sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(state.params))))
  summary.update(step=step, best=progress_state["best"], best_step=ckpt.best_step(),
                 validation=last_eval, param_checksum=checksum,
                 steps_per_epoch=length.steps_per_epoch, total_steps=length.total_steps,
                 wall_seconds=time.perf_counter() - started)
  if is_chief:
    run_config.save_summary(summary, workdir)
    best_step = ckpt.best_step()
    training_console.end(summary, cfg, workdir,
                ckpt.step_directory(best_step) if best_step is not None else None)
  logging.info("%s at step %d; best validation %s %s (step %s); parameter checksum %.9g",
               summary["stopped"], step, cfg.train.best_metric, progress_state["best"],
               ckpt.best_step(), checksum)
  return summary


def _save_summary_if_possible(summary: dict[str, Any], workdir: str) -> None:
  """summary.json of a failed run; a full disk must not hide the failure itself."""
  try:
    run_config.save_summary(summary, workdir)
  except OSError as e:
    logging.warning("could not write the run summary: %s", e)


def _plan_rows(cfg: ml_collections.ConfigDict, statics: steps.StepStatics,
               state: steps.TrainState, imported: Any) -> tuple:
  shapes = {p: tuple(x.shape) for p, x in paths.flatten(state.params).items()}
  return planning.plan_rows(statics.assignments, shapes,
                            initial_weights.sources(cfg.init, shapes, imported),
                            bool(cfg.model.freeze_bn_stats))


def _start_rows(cfg: ml_collections.ConfigDict, plan_rows: tuple, length: run_length.RunLength,
                mesh: Any, imported: Any, workdir: str) -> list[tuple[str, str]]:
  """The plan's description of the run, plus where it runs and writes."""
  rows = planning.describe(cfg, plan_rows, length, initial_weights.describe(cfg.init, imported))
  devices = mesh.devices.flat
  first = next(iter(devices))
  rows.insert(rows.index(next(r for r in rows if r[0] == "batch")) + 1, (
      "devices", f"{mesh.size} x {first.platform} ({first.device_kind}), "
                 f"{jax.process_count()} process(es), "
                 f"{cfg.train.batch_size // mesh.size} images per device"))
  if cfg.train.train_eval_examples:
    rows.append(("train-eval", f"{min(cfg.train.train_eval_examples, length.num_train_examples):,} "
                               "training examples evaluated like validation"))
  rows.append(("workdir", workdir))
  return rows


def _flat_hparams(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Dotted keys to scalars (sequences such as groups as text) for TensorBoard."""
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v)
          for k, v in config_check.leaves(cfg)}
