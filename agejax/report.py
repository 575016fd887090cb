r"""What a run shows and what to change: curves, diagnoses, comparisons.

  python -m agejax.report --workdir=DIR [--output=OUT]
  python -m agejax.report --workdir=A --workdir=B [--output=OUT]

One run: ``OUT/report.html`` (self-contained), ``report.md``, ``report.json``
and ``figures/*.png`` (default OUT: ``DIR/report``), and the diagnoses on the
console. Several runs: the same files comparing them (default OUT: the first
run's ``report``), with only the config keys that differ. Thresholds of the
diagnoses: ``--threshold NAME=VALUE`` (repeatable; the names and defaults are
in ``agejax/analysis/diagnoses.py``). Exit codes: 0 written (whatever the
diagnoses), 2 a workdir that is not a run.
"""

from __future__ import annotations

import sys

from absl import flags

from agejax import cli

FLAGS = cli.new_flags()
flags.DEFINE_multi_string("workdir", None, "Training run directory; repeat to compare runs.",
                          flag_values=FLAGS)
flags.DEFINE_string("output", None, "Report directory; default: the first run's report/.",
                    flag_values=FLAGS)
flags.DEFINE_multi_string("threshold", [], "NAME=VALUE: change one diagnosis threshold.",
                          flag_values=FLAGS)


def _main(args: list[str]) -> None:
  del args
  from agejax.analysis import run_report  # pylint: disable=import-outside-toplevel

  run_report.write_report(FLAGS["workdir"].value, FLAGS["output"].value, FLAGS["threshold"].value)


def main(argv: list[str] | None = None) -> int:
  # Not for data: clu's metric writers import TF, so it is imported quietly.
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.report", required=("workdir",))


if __name__ == "__main__":
  sys.exit(main())
