r"""agejax's entry point.

  python -m agejax.main --config=configs/demo.py --workdir=/tmp/run \
      [--config.optim.lr=0.01] [--dry_run]

``--dry_run`` validates the config, builds the model's shapes and the
optimizer, prints the plan and writes ``WORKDIR/plan.json``, then exits.
"""

from __future__ import annotations

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


def dry_run(cfg, workdir: str) -> str:
  """Validates ``cfg``, prints the plan and writes it; returns plan.json's path."""
  # Imported here so that `--help` and config errors do not pay for JAX.
  from agejax import plan as plan_lib
  from agejax import plots

  config_check.validate(cfg)
  plan = plan_lib.make_plan(cfg)
  print(plan_lib.format_plan(plan))
  out = plan_lib.write_plan(plan, workdir)
  figure = plots.plot_lr_plan(plan, os.path.join(workdir, "plan_lr.png"))
  print(f"\nplan written to {out}; learning rates plotted in {figure}")
  return out


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  cfg = _CONFIG.value
  try:
    if _DRY_RUN.value:
      dry_run(cfg, _WORKDIR.value)
      return
    config_check.validate(cfg)
    raise app.UsageError(
        "training is not available in this version of agejax; use --dry_run")
  except ConfigError as e:
    # One line naming the key: no traceback for a user's typo.
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
