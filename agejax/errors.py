"""Errors a user can act on, and the exit code each one ends a command with.

Every ``python -m agejax.X`` command prints an :class:`AgejaxError` as one
line (``agejax.X: <message>``) and exits with its ``exit_code``:

* 0: success;
* 1: the run failed (:class:`RunFailed`: the loss diverged, a checkpoint
  could not be written, a dataset file is corrupt, every search trial
  failed, ...);
* 2: usage or configuration error (:class:`ConfigError`, :class:`UsageError`,
  :class:`WorkdirInUse`).

Tracebacks are shown only with ``--verbosity=1`` or higher.
"""

from __future__ import annotations

from typing import Iterator

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2


def exception_chain(error: BaseException | None) -> Iterator[BaseException]:
  """``error``, then what caused it (``__cause__``, else ``__context__``), once each."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


class AgejaxError(Exception):
  """Base of the errors every command reports as one line."""
  exit_code = EXIT_RUN_FAILED


class UsageError(AgejaxError):
  """A command line that cannot run: a missing flag, an unknown argument."""
  exit_code = EXIT_USAGE


class ConfigError(AgejaxError, ValueError):
  """A configuration value is unknown, mistyped or impossible.

  The message always starts with the offending key (e.g. ``optim.lr``) so a
  one-line report tells the user what to change.
  """
  exit_code = EXIT_USAGE

  def __init__(self, key: str, message: str):
    self.key = key
    super().__init__(f"{key}: {message}")


class RunFailed(AgejaxError):
  """The command was well-formed but its work failed."""
  exit_code = EXIT_RUN_FAILED


class TrainingDiverged(RunFailed, FloatingPointError):
  """The loss, the metrics or the state became NaN or Inf.

  Raised before anything of that state is evaluated or saved, so every
  checkpoint on disk holds finite numbers.

  Attributes:
    step: the step at which it was noticed.
    value: what was non-finite (the loss, or a description).
    last_good_step: the latest complete checkpoint, or None.
    directory: where that checkpoint lives.
  """

  def __init__(self, step: int, value: object, last_good_step: int | None,
               directory: str = ""):
    self.step, self.value = int(step), value
    self.last_good_step, self.directory = last_good_step, directory
    where = f" in {directory}" if directory and last_good_step is not None else ""
    super().__init__(
        f"training diverged at step {self.step} (non-finite {value}); last good "
        f"checkpoint: {last_good_step}{where}. Lower optim.lr, add a warm-up "
        f"(optim.schedule.warmup_epochs) or clip gradients (optim.clip_grad_norm), "
        f"then resume or start afresh")


class WorkdirInUse(AgejaxError):
  """Another run holds the workdir's lock: two runs would overwrite each other."""
  exit_code = EXIT_USAGE

  def __init__(self, workdir: str, holder: str, lock_path: str):
    self.workdir, self.holder, self.lock_path = workdir, holder, lock_path
    super().__init__(
        f"{workdir} is in use by {holder}; use another --workdir, wait for that run, "
        f"or delete {lock_path} if it is gone")


class CheckpointSaveFailed(RunFailed, OSError):
  """Writing a checkpoint failed (a full disk, a quota, a lost mount).

  Attributes:
    step: the checkpoint that could not be written.
    directory: where checkpoints go.
    reason: the operating system's reason.
    last_good_step: the latest complete checkpoint (kept), or None.
  """

  def __init__(self, step: int, directory: str, reason: str, last_good_step: int | None):
    self.step, self.directory, self.reason = int(step), directory, reason
    self.last_good_step = last_good_step
    super().__init__(
        f"saving checkpoint {self.step} in {directory} failed: {reason}; the last complete "
        f"checkpoint is {last_good_step} (kept). Free space (or fix the mount), then run "
        "the same command again to resume from it")


class DataCorrupt(RunFailed):
  """A built dataset's file cannot be read: the dataset must be rebuilt."""


class ExportMismatch(RunFailed):
  """An exported model's outputs differ from JAX's beyond the tolerance (kept for inspection)."""
