r"""agejax's entry point.

  python -m agejax.main --config=configs/demo.py --workdir=/tmp/run \
      [--config.optim.lr=0.01] [--dry_run]

Without ``--dry_run`` it trains (resuming whatever ``WORKDIR`` holds).
``--dry_run`` validates the config, builds the model's shapes and the
optimizer, prints the plan and writes ``WORKDIR/plan.json``, then exits.
Exit codes: 0 done, 1 the run failed (the loss diverged), 2 bad flags or
config.
"""

from __future__ import annotations

import contextlib
import logging as pylogging
import os
import sys

from absl import flags
from ml_collections import config_flags

from agejax import cli


def _default_config_path() -> str:
  """configs/demo.py of the working directory, else of this checkout."""
  local = os.path.join("configs", "demo.py")
  if os.path.exists(local):
    return local
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), local)


FLAGS = cli.new_flags()
_CONFIG = config_flags.DEFINE_config_file(
    "config", _default_config_path(), "Config file (a get_config() module).",
    lock_config=True, flag_values=FLAGS)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: plan, checkpoints, metrics.", flag_values=FLAGS)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print the parameter/optimizer plan, write WORKDIR/plan.json, exit.",
    flag_values=FLAGS)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0, for multi-host runs outside an auto-detected cluster.",
    flag_values=FLAGS)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in a multi-host run.", flag_values=FLAGS)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in [0, num_processes).", flag_values=FLAGS)

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


class _QuietLibraryInfo(pylogging.Filter):
  """Drops INFO records of orbax and TFDS (dozens per checkpoint); keeps warnings."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    noisy = any(f"{os.sep}{lib}{os.sep}" in record.pathname
                for lib in ("orbax", "tensorflow_datasets"))
    return record.levelno >= pylogging.WARNING or not noisy


class _CheckpointLibraryErrors(pylogging.Filter):
  """Keeps orbax's and asyncio's tracebacks of a failed background write off the console.

  The log file has them; the failure itself is agejax's one line.
  """

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.name != "asyncio" and f"{os.sep}orbax{os.sep}" not in record.pathname


def _main(args: list[str]) -> None:
  for handler in pylogging.getLogger().handlers:
    handler.addFilter(_QuietLibraryInfo())
  del args  # none: cli.run refuses them
  cfg = _CONFIG.value
  if _DRY_RUN.value:
    from agejax.train import planning  # pylint: disable=import-outside-toplevel

    planning.dry_run(cfg, _WORKDIR.value)
    return
  initialize_distributed()
  from agejax.train import loop  # pylint: disable=import-outside-toplevel

  log_path = _log_to_workdir(_WORKDIR.value)
  if FLAGS["verbosity"].value >= 1:
    loop.train_and_evaluate(cfg, _WORKDIR.value)  # its console prints the outcome
    return
  # Libraries print tracebacks of their background threads straight to
  # sys.stderr (orbax and tensorstore when a checkpoint write fails): at the
  # default verbosity they go to the log; the failure itself is one line.
  with open(log_path, "a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
    loop.train_and_evaluate(cfg, _WORKDIR.value)


def _log_to_workdir(workdir: str) -> str:
  """Every library's INFO records (and agejax's) into WORKDIR/log.txt, beside the console's lines.

  The console shows warnings only; the file keeps the full story of the run.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from agejax.train import console  # pylint: disable=import-outside-toplevel

  os.makedirs(workdir, exist_ok=True)
  process = jax.process_index()
  name = console.LOG_FILE if process == 0 else f"log.process{process}.txt"
  handler = pylogging.FileHandler(os.path.join(workdir, name), encoding="utf-8")
  handler.setLevel(pylogging.INFO)
  handler.setFormatter(pylogging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  handler.addFilter(_QuietLibraryInfo())
  root = pylogging.getLogger()
  root.addHandler(handler)
  if root.level > pylogging.INFO:  # --verbosity=0: INFO to the file, warnings on stderr
    from absl import logging  # pylint: disable=import-outside-toplevel

    logging.get_absl_handler().setLevel(pylogging.WARNING)
    logging.get_absl_handler().addFilter(_CheckpointLibraryErrors())
    logging.set_verbosity(logging.INFO)
    root.setLevel(pylogging.INFO)
  return handler.baseFilename


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.main", required=("workdir",))


if __name__ == "__main__":
  sys.exit(main())
