"""The training loop: ``train_and_evaluate(config, workdir)``, one :class:`Run`.

One jit-compiled step over a mesh of every device (batch sharded on ``data``,
state replicated), orbax checkpoints with exact resume, clu metrics to
TensorBoard and ``metrics.jsonl``, periodic evaluation, best-checkpoint
selection and early stopping. Process 0 alone writes summaries; every process
takes part in checkpointing.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from clu import metrics as clu_metrics
from clu import periodic_actions
from jax.sharding import NamedSharding, PartitionSpec as P

from agejax import device_mesh
from agejax.config import config_check
from agejax.data import catalog
from agejax.data import folders
from agejax.data import input_pipeline
from agejax.errors import CheckpointSaveFailed
from agejax.errors import TrainingDiverged
from agejax.evaluation import predictions
from agejax.train import initial_weights
from agejax.models import paths
from agejax.train import cadence
from agejax.train import config_rules
from agejax.train import console
from agejax.train import run_length
from agejax.train import planning
from agejax.train import preemption
from agejax.train import step_state
from agejax.train import steps
from agejax.workdir import checkpointing
from agejax.workdir import run_lock
from agejax.workdir import metric_io
from agejax.workdir import restore
from agejax.workdir import run_config


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

  Raises:
    WorkdirInUse: another run trains in ``workdir`` (nothing was touched).
  """
  config_rules.validate(cfg)
  lock = run_lock.lock_for_every_process(workdir)
  try:
    return Run(cfg, workdir, lock, step_hook, eval_hook).train()
  finally:
    lock.release()


class _IntervalTimer:
  """Training time since the last log: evaluation, checkpoints and compilation excluded."""

  def __init__(self, step: int):
    self.restart(step)

  def restart(self, step: int) -> None:
    self.start, self.step, self.data_wait = time.perf_counter(), step, 0.0

  def exclude(self, seconds: float) -> None:
    self.start += seconds

  def rates(self, step: int, length: run_length.RunLength) -> dict[str, float]:
    """Speed since the interval began; none when it held only the compiling first step."""
    elapsed, done = time.perf_counter() - self.start, step - self.step
    if not done:
      return {}
    return {"steps_per_sec": done / elapsed,
            "images_per_sec": (length.examples_before(step) -
                               length.examples_before(self.step)) / elapsed,
            "data_wait_fraction": self.data_wait / elapsed}


class Run:
  """One training run in a workdir: its state, streams, timers, checkpointer and writers.

  :meth:`train` is the loop: :meth:`train_step` until the run ends, logging
  at :meth:`log_interval` and then :meth:`evaluate_and_checkpoint`, which is
  the one place a checkpoint is saved and where the run decides to stop.
  Every process runs the same calls; process 0 alone writes summaries.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: str, lock: run_lock.WorkdirLock,
               step_hook: Callable[[int], None] | None,
               eval_hook: Callable[[int, dict[str, float]], None] | None):
    self.cfg, self.workdir, self.lock = cfg, workdir, lock
    self.step_hook, self.eval_hook = step_hook, eval_hook
    self.imported = initial_weights.prepare_pretrained(cfg)
    self.mesh = device_mesh.data_parallel_mesh()
    self.is_chief = jax.process_index() == 0
    catalog.ensure_prepared(cfg.data)
    folders.apply_protocol_split(cfg.data)  # before config.json: it records the folders
    self.length = run_length.run_length(cfg, run_length.num_train_examples(cfg))
    for phase in self.length.phases:
      device_mesh.check_batch(run_length.batch_key(phase), phase.batch_size, self.mesh)
    self.cadence = cadence.Cadence.of(cfg, self.length)
    self.statics = step_state.build_step_fns(cfg, self.length)
    self.ckpt = restore.checkpointer(
        workdir, keep_last=cfg.train.keep_checkpoints, keep_best=cfg.train.keep_best,
        best_metric=cfg.train.best_metric, best_mode="min")
    self.state, self.progress, resumed_from = self._restore_or_initialise()
    if self.is_chief:
      # The resolved config (with the pretrained weights' model keys): what
      # evaluate, predict and export rebuild the network from.
      run_config.save(cfg, workdir)
    self.writer = metric_io.create_writer(workdir, self.is_chief)
    if resumed_from is None:
      self.writer.write_hparams(_flat_hparams(cfg))
    self.train_fn = jax.jit(steps.bind(self.statics, steps.train_step), donate_argnums=0)
    self.forward_fn = predictions.make_forward(self.statics.graphdef,
                                               bool(cfg.data.eval_flip_tta), self.mesh)
    self.step = self.first_step = int(jax.device_get(self.state.step))
    self.profile = (periodic_actions.Profile(logdir=workdir, num_profile_steps=5)
                    if self.is_chief and cfg.train.profile else None)
    self.console = console.TrainingConsole(workdir, self.length, self.step,
                                           enabled=self.is_chief)
    rows = _plan_rows(cfg, self.statics, self.state, self.imported)
    self.console.start(_start_rows(cfg, rows, self.statics, self.length, self.mesh, self.imported,
                                   workdir),
                       planning.fine_tune_warning(cfg, rows), resumed_from=resumed_from)
    self.phase, self.train_iter = self._phase_batches(self.step)
    self.preemption = preemption.Preemption()
    self.accumulated: dict[str, clu_metrics.Average] | None = None
    self.timer = _IntervalTimer(self.step)
    self.last_eval: dict[str, float] = {}
    self.stop_reason: str | None = None
    self.started = time.perf_counter()

  def _restore_or_initialise(self) -> tuple[steps.TrainState, dict[str, Any], int | None]:
    """The latest checkpoint's state and progress, else fresh ones; the step resumed from."""
    latest = self.ckpt.latest_step()
    progress = {"best": None, "evals_since_best": 0}
    state = step_state.create_train_state(
        self.cfg, self.statics, NamedSharding(self.mesh, P()), load_weights=latest is None,
        imported=self.imported)
    if latest is not None:
      state, extra = self.ckpt.restore(latest, checkpointing.abstract_like(state))
      progress = extra.get("progress", progress)
      logging.info("resumed from step %d in %s", latest, self.ckpt.directory)
    return state, progress, latest

  def _phase_batches(self, at_step: int) -> tuple[run_length.Phase, Any]:
    """The training stream of the phase of ``at_step``, from that step on."""
    cfg, length = self.cfg, self.length
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
        NamedSharding(self.mesh, P("data")), cfg.data.prefetch, cfg.data, cfg.data.train_split)

  def train(self) -> dict[str, Any]:
    """Runs to the end, early stopping or preemption; returns the run's summary."""
    try:
      while self.stop_reason is None and self.step < self.length.total_steps:
        self.train_step()
        if self.cadence.logs(self.step):
          self.log_interval()
        self.evaluate_and_checkpoint()
    except (TrainingDiverged, CheckpointSaveFailed) as e:
      self._record_failure(e)
      raise
    finally:
      self._close()
    return self._finish()

  def train_step(self) -> None:
    """One step on the next batch (a new phase's stream at a phase boundary)."""
    if self.step == self.phase.end_step:  # the next phase: its batch, its input side
      self.train_iter.close()
      self.phase, self.train_iter = self._phase_batches(self.step)
    t0 = time.perf_counter()
    batch = next(self.train_iter)
    self.timer.data_wait += time.perf_counter() - t0
    self.state, step_metrics = self.train_fn(self.state, batch)
    self.accumulated = _average(self.accumulated, step_metrics)
    self.step += 1
    if self.step == self.first_step + 1:
      # Compilation is not training speed: time from the first finished step.
      jax.block_until_ready(self.state)
      self.timer.restart(self.step)
    self.ckpt.check()  # a failed background save stops the run at once, not at the next save
    if self.profile is not None:
      self.profile(self.step)
    self.console.advance(self.step)
    if self.step_hook is not None:
      self.step_hook(self.step)

  def log_interval(self) -> None:
    """Writes the interval's mean training metrics and speed; stops a diverged run."""
    values = {k: float(v.compute()) for k, v in jax.device_get(self.accumulated).items()}
    self.accumulated = None
    values.update(self.timer.rates(self.step, self.length))
    # Written before the check: a diverged interval is on record for the report.
    self.writer.write_scalars(self.step, {f"train/{k}": v for k, v in values.items()})
    self.console.interval(self.step, values)
    self.lock.heartbeat()
    self._check_finite("training loss", values["loss"])
    self.timer.restart(self.step)

  def evaluate_and_checkpoint(self) -> None:
    """Evaluates and saves when the cadence says so or the run stops here."""
    paused = time.perf_counter()
    evaluated = self.cadence.evaluates(self.step)
    if evaluated:
      self._evaluate()
    self.stop_reason = self._stop_reason(evaluated)
    if self.cadence.checkpoints(self.step) or self.stop_reason:
      self._check_loss()  # nothing of a diverged state is ever written
      self.ckpt.save(self.step, self.state, metrics=self.last_eval if evaluated else None,
                     extra={"step": self.step, "progress": self.progress,
                            "phase": self.length.phase_at(max(self.step - 1, 0)).index})
    if evaluated and self.eval_hook is not None:
      self.eval_hook(self.step, self.last_eval)
    self.timer.exclude(time.perf_counter() - paused)  # not training time

  def _evaluate(self) -> None:
    cfg, step = self.cfg, self.step
    self._check_loss()
    self.last_eval = evaluate(self.forward_fn, self.state, cfg, cfg.data.eval_split, self.mesh)
    self._check_finite(f"validation {cfg.train.best_metric}",
                       self.last_eval[cfg.train.best_metric])
    self.writer.write_scalars(step, {f"validation/{k}": v for k, v in self.last_eval.items()})
    train_eval = None
    examples = min(cfg.train.train_eval_examples, self.length.num_train_examples)
    if examples:
      train_eval = evaluate(self.forward_fn, self.state, cfg, cfg.data.train_split, self.mesh,
                            max_examples=examples)
      self.writer.write_scalars(step, {f"train_eval/{k}": v for k, v in train_eval.items()})
    self.progress = update_progress(self.progress, self.last_eval[cfg.train.best_metric])
    self.console.evaluation(step, cfg.train.best_metric, self.last_eval, train_eval,
                            best=self.progress["evals_since_best"] == 0)

  def _stop_reason(self, evaluated: bool) -> str | None:
    """Early stopping after an evaluation, else a preemption every process agreed on."""
    if evaluated and self.cadence.out_of_patience(self.progress["evals_since_best"]):
      return f"early stopping: no improvement in {self.cadence.patience} evaluations"
    # Agreeing across hosts is a collective: do it only at logging steps.
    may_sync = jax.process_count() == 1 or self.step % self.cadence.log_every == 0
    if may_sync and self.preemption.agreed():
      return "preempted"
    return None

  def _check_loss(self) -> None:
    """Every step's loss since the last log is finite (one host sync)."""
    if self.accumulated is not None:
      self._check_finite("training loss",
                         float(jax.device_get(self.accumulated["loss"]).compute()))

  def _check_finite(self, what: str, value: float) -> None:
    """Raises TrainingDiverged when ``value`` is NaN or Inf (one check, one exception type)."""
    if not math.isfinite(value):
      self.ckpt.wait()  # a finite checkpoint still being written is the last good one
      raise TrainingDiverged(self.step, f"{what} ({value})", self.ckpt.latest_step(),
                             self.ckpt.directory)

  def _record_failure(self, e: TrainingDiverged | CheckpointSaveFailed) -> None:
    if self.is_chief:
      kind = "diverged" if isinstance(e, TrainingDiverged) else "checkpoint save failed"
      _save_summary_if_possible({
          "stopped": f"{kind}: {e}", "step": e.step,
          "steps_per_epoch": self.length.steps_per_epoch,
          "total_steps": self.length.total_steps, "best": self.progress["best"],
          "best_step": self.ckpt.best_step(),
          "wall_seconds": time.perf_counter() - self.started}, self.workdir)

  def _close(self) -> None:
    self.preemption.restore()
    self.train_iter.close()
    try:
      self.ckpt.wait()
    except CheckpointSaveFailed:
      if sys.exc_info()[0] is None:  # not while another failure is on its way out
        raise
    self.writer.flush()
    self.console.close()

  def _finish(self) -> dict[str, Any]:
    cfg, length = self.cfg, self.length
    # Identical on every process when the replicas agree (multi-host tests read it).
    checksum = float(jax.device_get(
        sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(self.state.params))))
    summary = {"stopped": self.stop_reason or "completed", "step": self.step,
               "best": self.progress["best"], "best_step": self.ckpt.best_step(),
               "validation": self.last_eval, "param_checksum": checksum,
               "steps_per_epoch": length.steps_per_epoch, "total_steps": length.total_steps,
               "wall_seconds": time.perf_counter() - self.started}
    if self.is_chief:
      run_config.save_summary(summary, self.workdir)
      best_step = self.ckpt.best_step()
      self.console.end(summary, cfg, self.workdir,
                       self.ckpt.step_directory(best_step) if best_step is not None else None)
    logging.info("%s at step %d; best validation %s %s (step %s); parameter checksum %.9g",
                 summary["stopped"], self.step, cfg.train.best_metric, self.progress["best"],
                 self.ckpt.best_step(), checksum)
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


def _start_rows(cfg: ml_collections.ConfigDict, plan_rows: tuple, statics: steps.StepStatics,
                length: run_length.RunLength, mesh: Any, imported: Any, workdir: str
                ) -> list[tuple[str, str]]:
  """The plan's description of the run, plus where it runs and writes."""
  rows = planning.describe(cfg, plan_rows, length, initial_weights.describe(cfg.init, imported),
                           statics.age_weights)
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
