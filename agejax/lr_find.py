r"""The learning-rate range test: grow the LR exponentially, watch the loss.

  python -m agejax.lr_find --config=configs/X.py [--config.k=v ...] --workdir=DIR \
      [--steps=200] [--min_lr=1e-6] [--max_lr=10]

Trains from the config's initial weights with the base learning rate growing
from --min_lr to --max_lr (every group keeps its lr_mult), stops once the
smoothed loss has blown up, writes DIR/lr_find.png and DIR/lr_find.json and
prints the suggested base LR. Exit codes: 0 done, 2 bad flags or config.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from agejax import cli

FLAGS = cli.new_flags()
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True,
                                          flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "Where lr_find.png and lr_find.json go.", flag_values=FLAGS)
flags.DEFINE_integer("steps", 200, "Optimizer updates in the sweep.", lower_bound=2,
                     flag_values=FLAGS)
flags.DEFINE_float("min_lr", 1e-6, "Base learning rate at the first step.", lower_bound=1e-12,
                   flag_values=FLAGS)
flags.DEFINE_float("max_lr", 10.0, "Base learning rate at the last step.", lower_bound=1e-12,
                   flag_values=FLAGS)
flags.register_multi_flags_validator(
    ["min_lr", "max_lr"], lambda v: v["max_lr"] > v["min_lr"],
    message="--max_lr must be above --min_lr", flag_values=FLAGS)


def _main(args: list[str]) -> None:
  del args  # none: cli.run refuses them
  from agejax.tools import lr_range_test  # pylint: disable=import-outside-toplevel

  result, figure = lr_range_test.run(_CONFIG.value, FLAGS.workdir, FLAGS.steps, FLAGS.min_lr,
                               FLAGS.max_lr)
  lr = result["suggested_lr"]
  print(f"{len(result['lrs'])} steps from lr {result['lrs'][0]:.2e} to "
        f"{result['lrs'][-1]:.2e}; suggested base lr: {lr:.3g} "
        f"(--config.optim.lr={lr:.3g}); curve in {figure}")


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.lr_find",
                 required=("config", "workdir"))


if __name__ == "__main__":
  sys.exit(main())
