r"""agejax's entry point.

  python -m agejax.main --config=configs/demo.py --workdir=/tmp/run \
      [--config.optim.lr=0.01] [--dry_run]

Without ``--dry_run`` it trains (resuming whatever ``WORKDIR`` holds).
``--dry_run`` validates the config, builds the model's shapes and the
optimizer, prints the plan and writes ``WORKDIR/plan.json``, then exits.
"""

from __future__ import annotations

import logging as pylogging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from agejax import config_check
from agejax.errors import ConfigError


def _default_config_path() -> str:
  """configs/demo.py of the working directory, else of this checkout."""
  local = os.path.join("configs", "demo.py")
  if os.path.exists(local):
    return local
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), local)


_CONFIG = config_flags.DEFINE_config_file(
    "config", _default_config_path(), "Config file (a get_config() module).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: plan, checkpoints, metrics.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print the parameter/optimizer plan, write WORKDIR/plan.json, exit.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0, for multi-host runs outside an auto-detected cluster.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")

# Environment variables of cluster managers jax.distributed.initialize() reads
# by itself; one of them set with several tasks means a multi-process launch.
_CLUSTER_TASK_COUNTS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _multi_process_launch() -> bool:
  return any(int(os.environ.get(v, "1")) > 1 for v in _CLUSTER_TASK_COUNTS)


def initialize_distributed() -> None:
  """Joins the other processes before any device is touched (multi-host only)."""
  import jax

  # Only the CPU backend reads this: it gives CPU-only processes real
  # cross-process collectives (tests, CPU clusters); GPUs use NCCL regardless.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  elif _multi_process_launch():
    jax.distributed.initialize()


def dry_run(cfg, workdir: str) -> str:
  """Validates ``cfg``, prints the plan and writes it; returns plan.json's path."""
  # Imported here so that `--help` and config errors do not pay for JAX.
  from agejax import plan as plan_lib
  from agejax import plots

  from agejax import initialization

  config_check.validate(cfg)
  initialization.prepare_pretrained(cfg)  # the weights decide variant and preprocessing
  plan = plan_lib.make_plan(cfg)
  print(plan_lib.format_plan(plan))
  out = plan_lib.write_plan(plan, workdir)
  figure = plots.plot_lr_plan(plan, os.path.join(workdir, "plan_lr.png"))
  print(f"\nplan written to {out}; learning rates plotted in {figure}")
  return out


class _QuietLibraryInfo(pylogging.Filter):
  """Drops INFO records of orbax and TFDS (dozens per checkpoint); keeps warnings."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    noisy = any(f"{os.sep}{lib}{os.sep}" in record.pathname
                for lib in ("orbax", "tensorflow_datasets"))
    return record.levelno >= pylogging.WARNING or not noisy


def main(argv: list[str]) -> None:
  for handler in pylogging.getLogger().handlers:
    handler.addFilter(_QuietLibraryInfo())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  cfg = _CONFIG.value
  try:
    if _DRY_RUN.value:
      dry_run(cfg, _WORKDIR.value)
      return
    initialize_distributed()
    from agejax import train

    try:
      train.train_and_evaluate(cfg, _WORKDIR.value)
    except train.TrainingDiverged as e:
      print(f"training stopped: {e}", file=sys.stderr)
      sys.exit(3)
  except ConfigError as e:
    # One line naming the key: no traceback for a user's typo.
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
