r"""Audit a built dataset: duplicated and leaked faces, conflicting and impossible labels.

  python -m agejax.audit --dataset=NAME [--data_dir=D] --output=DIR \
      [--max_distance=8] [--min_correlation=0.99]

Reads every split of the dataset once (images at their stored size), finds
exact, near and mirrored duplicate pairs within and across splits (leaks),
pairs with two ages (conflicts) and impossible labels, prints a summary and
writes DIR/audit.json, DIR/audit.html (self-contained: the age histogram of
each split, contact sheets of the findings) and DIR/exclude.txt (the keys
training should leave out, with the reasons as comments). See
agejax.auditing.findings for the rules. Exit codes: 0 done, whatever it
found; 2 bad flags or a dataset that is not built.
"""

from __future__ import annotations

import sys

from absl import flags

from agejax import cli

FLAGS = cli.new_flags()
flags.DEFINE_string("dataset", None, "A built dataset: NAME[/CONFIG][:VERSION].",
                    flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data_dir; default: TFDS's.", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Folder for audit.json, audit.html, exclude.txt.",
                    flag_values=FLAGS)
flags.DEFINE_integer("max_distance", 8, "pHash bits two duplicates may differ in.",
                     lower_bound=0, upper_bound=32, flag_values=FLAGS)
flags.DEFINE_float("min_correlation", 0.99, "Signature correlation a duplicate must reach.",
                   flag_values=FLAGS)


def _main(args: list[str]) -> None:
  del args  # none: cli.run refuses them
  # pylint: disable=import-outside-toplevel
  import os

  from agejax.auditing import audit_report
  from agejax.auditing import dataset_audit
  from agejax.auditing import dataset_scan
  from agejax.auditing import findings

  import ml_collections

  from agejax.data import catalog

  data_dir = FLAGS.data_dir or os.path.expanduser("~/tensorflow_datasets")
  # Generated datasets are built on first use, as training builds them.
  catalog.ensure_prepared(ml_collections.ConfigDict({"dataset": FLAGS.dataset,
                                                     "data_dir": data_dir}))
  scan = dataset_scan.scan(FLAGS.dataset, data_dir)
  doc, excluded = dataset_audit.audit(scan, findings.Settings(
      max_distance=FLAGS.max_distance, min_correlation=FLAGS.min_correlation))
  paths = audit_report.write(FLAGS.output, doc, scan, data_dir, excluded)
  print(doc["summary"])
  print(f"written: {paths[audit_report.HTML_FILE]}, {audit_report.JSON_FILE}, "
        f"{audit_report.EXCLUDE_FILE}")


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.audit",
                 required=("dataset", "output"))


if __name__ == "__main__":
  sys.exit(main())
