r"""Hyperparameter search with Optuna: every trial is a normal agejax run.

  python -m agejax.tune --config=configs/imdb_wiki_resnet50.py [--config.k=v ...] \
      --space=configs/spaces/dex.py --study=dex --trials=20 --workdir_root=/runs/dex_search \
      [--storage=postgresql+psycopg2://user@host/db] [--report]

The space file defines ``space(trial) -> {config key: value}``. Each trial
trains in WORKDIR_ROOT/trial_<n>; diverging trials are pruned, trials with a
config error are recorded with the reason. See agejax.tools.optuna_search. Exit codes:
0 done, 1 every trial failed, 2 bad flags or config.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from agejax import cli

FLAGS = cli.new_flags()
_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config file (get_config()).",
                                          lock_config=True, flag_values=FLAGS)
flags.DEFINE_string("space", None, "Search space file (space(trial) -> overrides).",
                    flag_values=FLAGS)
flags.DEFINE_string("storage", None, "Optuna RDB URL; default: SQLite in --workdir_root.",
                    flag_values=FLAGS)
flags.DEFINE_string("study", None, "Study name (workers with the same name share it).",
                    flag_values=FLAGS)
flags.DEFINE_integer("trials", 10, "Trials this worker runs.", flag_values=FLAGS)
flags.DEFINE_string("workdir_root", None, "Each trial trains in WORKDIR_ROOT/trial_<n>.",
                    flag_values=FLAGS)
flags.DEFINE_bool("report", False, "Only print and save the ranked report.", flag_values=FLAGS)


def _main(args: list[str]) -> None:
  del args  # none: cli.run refuses them
  from agejax.tools import optuna_search  # pylint: disable=import-outside-toplevel

  base = _CONFIG.value
  optuna_search.run_study(base.copy_and_resolve_references, FLAGS.study, FLAGS.workdir_root,
                 space_file=FLAGS.space, trials=FLAGS.trials, storage=FLAGS.storage,
                 report_only=FLAGS.report)


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.tune",
                 required=("config", "workdir_root", "study"))


if __name__ == "__main__":
  sys.exit(main())
