"""Checkpoints of the train state, on top of an orbax ``CheckpointManager``.

This class owns the folder layout: nobody else spells a step's path.
Each step directory holds two items: ``state`` (the train state pytree,
written by every process through ``StandardSave`` so sharded and replicated
arrays both work on many hosts) and ``extra`` (a JSON dict written once: the
step and the training progress). Validation metrics ride along as orbax's
own ``metrics`` item so that retention survives a restart.

Retention is orbax's preservation policy: ``LatestN(keep_last)`` OR
``BestN(keep_best)`` over the checkpoints that carry metrics. A checkpoint
saved without metrics is therefore kept only while it is among the latest.

Completeness is orbax's atomic commit: a step is written under a temporary
name and renamed (or, on object stores, marked by a commit file) only when
every item of every process is on disk. A process killed mid-write leaves a
temporary directory that is never listed as a step and is removed by the next
``Checkpointer`` (``cleanup_tmp_directories``).

Every process must call every method here in the same order with the same
arguments: saving, waiting and restoring contain cross-process barriers.

PRNG keys: store raw key data (``jax.random.key_data``, uint32) in the train
state and wrap it with ``jax.random.wrap_key_data`` where it is used. The
installed orbax also round-trips typed key arrays (the test suite checks
this), but raw data keeps checkpoints readable by older orbax releases, which
the package's version range admits, and by tools that know nothing of key
implementations.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy

from agejax.config import config_check
from agejax.errors import CheckpointSaveFailed
from agejax.errors import exception_chain
from agejax.errors import TrainingDiverged

# WORKDIR/checkpoints: the folder this module lays out (one orbax step folder per save).
CHECKPOINTS_DIR = "checkpoints"
BEST_METRICS = ("mae", "loss", "rmse")  # validation metrics, all lower-is-better

RULES: dict[str, config_check.Rule] = {
    "train.keep_checkpoints": config_check.POSITIVE,
    "train.keep_best": config_check.NON_NEGATIVE,
    "train.best_metric": config_check.one_of(BEST_METRICS),
}


def check(cfg: Any) -> None:
  """The rules of which checkpoints a run keeps."""
  config_check.check_rules(cfg, RULES)
_STATE = "state"
_EXTRA = "extra"


def abstract_like(state: Any) -> Any:
  """Returns a restore target shaped like `state`.

  Args:
    state: A pytree of arrays (or of ``jax.ShapeDtypeStruct``, e.g. from
      ``jax.eval_shape``), whose shardings are kept.

  Returns:
    The same pytree with every leaf a ``jax.ShapeDtypeStruct`` carrying the
    leaf's shape, dtype and (if it has one) sharding.
  """

  def one(leaf: Any) -> jax.ShapeDtypeStruct:
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
      leaf = np.asarray(leaf)
    return jax.ShapeDtypeStruct(
        leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))

  return jax.tree.map(one, state)


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


_OS_PHRASES = ("No space left on device", "Disk quota exceeded", "Read-only file system",
               "Permission denied", "Input/output error", "Stale file handle")


def os_reason(error: BaseException) -> str:
  """The operating system's reason behind ``error`` (orbax wraps it several layers deep)."""
  for link in exception_chain(error):
    if isinstance(link, OSError) and link.strerror:
      return link.strerror + (f" ({link.filename})" if link.filename else "")
    for phrase in _OS_PHRASES:
      if phrase in str(link):
        return phrase
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _is_finite(state: Any) -> bool:
  """Whether every inexact leaf of `state` is free of NaN and Inf."""
  leaves = []
  for leaf in jax.tree.leaves(state):
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    # Key arrays and integers cannot hold NaN (and isfinite rejects keys).
    if jnp.issubdtype(dtype, jnp.inexact):
      leaves.append(leaf)
  if not leaves:
    return True
  # One compiled reduction over the global arrays: every process computes the
  # same flag, so all of them refuse together instead of some entering the
  # save barriers alone. The scalar is replicated, so the first local copy is
  # readable even when the array spans devices of other processes.
  flag = _all_finite(leaves)
  return bool(np.asarray(flag.addressable_data(0)))


class Checkpointer:
  """Saves and restores (train state, extra) per step; see module docstring."""

  def __init__(self, directory: str, *, keep_last: int = 3, keep_best: int = 1,
               best_metric: str = "mae", best_mode: str = "min",
               async_save: bool = True):
    """Opens (and creates) the checkpoint directory.

    Args:
      directory: Where step directories live, normally WORKDIR/checkpoints.
        Local paths are made absolute; URLs such as gs://... are kept.
      keep_last: How many of the latest checkpoints to keep (at least 1).
      keep_best: How many checkpoints to keep by `best_metric`, besides the
        latest ones.
      best_metric: The key of the `metrics` dict that ranks checkpoints.
      best_mode: "min" if lower values of `best_metric` are better, else
        "max".
      async_save: Write in the background; `save` returns once the arrays
        are copied off the devices.
    """
    if keep_last < 1:
      raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    if keep_best < 0:
      raise ValueError(f"keep_best must be at least 0, got {keep_best}")
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
    if "://" not in directory:
      directory = os.path.abspath(directory)
    self._best_metric = best_metric
    self._in_flight: int | None = None
    self._unconfirmed: list[int] = []  # saves issued, not yet seen complete

    def metric(metrics: dict[str, float]) -> float:
      return metrics[best_metric]

    policy = preservation_policy.AnyPreservationPolicy([
        preservation_policy.LatestN(n=keep_last),
        # BestN keeps the tail of an ascending sort; reversing makes the
        # tail the smallest values.
        preservation_policy.BestN(
            get_metric_fn=metric, reverse=best_mode == "min", n=keep_best,
            keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        # best_fn/best_mode also make orbax write the metrics item and
        # answer best_step(); retention itself is decided by `policy`.
        best_fn=metric,
        best_mode=best_mode,
        preservation_policy=policy,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    self._manager = ocp.CheckpointManager(directory, options=options)

  @property
  def directory(self) -> str:
    return str(self._manager.directory)

  def step_directory(self, step: int) -> str:
    """Where checkpoint ``step`` lives (what a person would ``ls``)."""
    return os.path.join(self.directory, str(int(step)))

  def save(self, step: int, state: Any, *, extra: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    """Saves `state` and `extra` as `step` (in the background if async).

    Args:
      step: The step number; must be above every step already saved.
      state: A pytree of jax.Arrays (any sharding).
      extra: A JSON-serialisable dict returned as is by `restore`.
      metrics: Validation metrics (name -> number) including `best_metric`,
        or None if this checkpoint should count only as one of the latest.

    Raises:
      TrainingDiverged: An inexact leaf of `state` holds NaN or Inf.
      TypeError: `extra` is not JSON-serialisable.
      ValueError: `metrics` lacks a finite `best_metric`, or `step` is not
        after the latest step.
    """
    step = int(step)
    try:
      json.dumps(extra)
    except (TypeError, ValueError) as e:
      # Checked here because an async write would only fail in the background.
      raise TypeError(f"extra of step {step} is not JSON-serialisable: {e}"
                     ) from e
    if metrics is not None:
      metrics = {name: float(value) for name, value in metrics.items()}
      value = metrics.get(self._best_metric)
      if value is None or not math.isfinite(value):
        raise ValueError(f"metrics of step {step} need a finite "
                         f"{self._best_metric!r}, got {value}")
    if not _is_finite(state):
      self.wait()
      raise TrainingDiverged(step, "train state", self.latest_step(), self.directory)
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(state),
        _EXTRA: ocp.args.JsonSave(extra),
    })
    self.check()  # an earlier background write that failed is reported first
    try:
      saved = self._manager.save(step, args=args, metrics=metrics)
    except Exception as e:  # pylint: disable=broad-except
      self._unconfirmed.append(step)
      raise self._failure(e) from e
    if not saved:
      # Orbax declines steps at or below its latest one.
      raise ValueError(f"step {step} is not after the latest checkpoint, "
                       f"step {self._manager.latest_step()}")
    self._in_flight = step
    self._unconfirmed.append(step)

  def all_steps(self) -> list[int]:
    """The kept, completely written steps, ascending."""
    steps = sorted(self._manager.all_steps())
    if self._in_flight is not None and self._manager.is_saving_in_progress():
      steps = [s for s in steps if s != self._in_flight]
    return steps

  def latest_step(self) -> int | None:
    """The latest completely written step, or None."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> int | None:
    """The kept step with the best metric, or None if none has metrics.

    This may name a step whose asynchronous write is still finishing;
    `restore` waits for it.
    """
    return self._manager.best_step()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Reads `step` back.

    Args:
      step: A step listed by `all_steps` (or `best_step`).
      abstract_state: The state's pytree with ``jax.ShapeDtypeStruct`` leaves
        whose shardings say where each restored array goes (see
        `abstract_like`); the saved sharding may differ.

    Returns:
      (state with the pytree structure and shardings of `abstract_state`,
      the `extra` dict saved with it).
    """
    # A step is readable only once its write has been committed.
    self.wait()
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardRestore(abstract_state),
        _EXTRA: ocp.args.JsonRestore(),
    })
    restored = self._manager.restore(int(step), args=args)
    return restored[_STATE], restored[_EXTRA]

  def resolve(self, which: str | int) -> int:
    """``best``, ``latest`` or a step number -> a kept, complete step.

    Raises:
      FileNotFoundError: there is no checkpoint.
      ValueError: ``which`` names no kept step.
    """
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    which = str(which)
    if which == "latest":
      return steps[-1]
    if which == "best":
      best = self.best_step()
      return best if best is not None else steps[-1]
    if not which.isdigit() or int(which) not in steps:
      raise ValueError(f"checkpoint {which!r}: use best, latest or one of {steps}")
    return int(which)

  def restore_params(self, step: int) -> dict[str, Any]:
    """The stored state of ``step`` as host numpy trees, without a target.

    For reading weights (evaluation, export, initial weights) on any device
    layout: ``params``, ``batch_stats``, ``ema_params`` (``{}`` without EMA),
    and the rest of the train state.
    """
    self.wait()
    item = os.path.join(self.step_directory(step), _STATE)
    # Asked for numpy, orbax needs no device layout (and does not warn that it
    # had to read one from the sharding file).
    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(item)).tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ocp.PyTreeCheckpointer().restore(item, restore_args=as_numpy)

  def wait(self) -> None:
    """Blocks until the pending write (if any) is committed.

    Raises:
      CheckpointSaveFailed: that write failed.
    """
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._failure(e) from e

  def check(self) -> None:
    """Raises CheckpointSaveFailed as soon as a background write has failed (cheap).

    A write that ended without its step among the complete ones failed;
    waiting on it returns its error.
    """
    step = self._in_flight
    if step is None or self._manager.is_saving_in_progress():
      return
    if step in self._manager.all_steps(read=True):  # on disk, not orbax's in-memory list
      self._in_flight = None
      self._unconfirmed = []  # orbax writes one at a time: every earlier one completed too
      return
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._failure(e) from e
    raise self._failure(RuntimeError("the checkpoint did not appear after its write"))

  def _failure(self, error: BaseException) -> CheckpointSaveFailed:
    """The error of a failed write: the earliest save issued that never completed."""
    self._in_flight = None  # it will never complete: latest_step() must not wait on it
    complete = sorted(self._manager.all_steps(read=True))
    missing = [s for s in self._unconfirmed if s not in complete]
    failed = missing[0] if missing else -1
    self._unconfirmed = []
    return CheckpointSaveFailed(failed, self.directory, os_reason(error),
                                complete[-1] if complete else None)

  def close(self) -> None:
    """Waits for pending writes and deletions, then releases orbax."""
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()
