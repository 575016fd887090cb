"""Errors a user can act on, and the exit code each one ends a command with.

Every ``python -m agejax.X`` command prints an :class:`AgejaxError` as one
line (``agejax.X: <message>``) and exits with its ``exit_code``:

* 0: success;
* 1: the run failed (:class:`RunFailed`: the loss diverged, every search
  trial failed, ...);
* 2: usage or configuration error (:class:`ConfigError`, :class:`UsageError`).

Tracebacks are shown only with ``--verbosity=1`` or higher.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2


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
