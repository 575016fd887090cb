r"""Audit a built dataset: duplicated and leaked faces, conflicting and impossible labels.

  python -m agejax.audit --dataset=NAME [--data_dir=D] --output=DIR \
      [--max_distance=8] [--min_correlation=0.99] \
      [--protocol_root=ROOT | --workdir=RUN | --model=EXPORT] \
      [--label_issue_share=0.01] [--label_issue_threshold=T] [--exclude_label_issues]

Reads every split of the dataset once (images at their stored size), finds
exact, near and mirrored duplicate pairs within and across splits (leaks),
pairs with two ages (conflicts) and impossible labels, prints a summary and
writes DIR/audit.json, DIR/audit.html (self-contained: the age histogram of
each split, contact sheets of the findings) and DIR/exclude.txt (the keys
training should leave out, with the reasons as comments). See
agejax.auditing.findings for the rules.

With a model, every example also gets a predicted age in the same pass, and
the labels furthest from it are listed as label issues (with thumbnails in
audit.html, every score in DIR/label_scores.csv):
``--protocol_root`` takes the runs of ``agejax.protocol`` on this dataset
and predicts each example by the run that held it out (out-of-fold);
``--workdir`` / ``--model`` predict everything with one model and warn when
it trained on the audited data. ``--exclude_label_issues`` adds the listed
ones to exclude.txt. See agejax.auditing.label_issues.

Exit codes: 0 done, whatever it found; 2 bad flags, a dataset that is not
built, or models that do not cover it.
"""

from __future__ import annotations

import sys

from absl import flags

from agejax import cli
from agejax.errors import UsageError

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
flags.DEFINE_string("protocol_root", None, "agejax.protocol's runs on this dataset: "
                    "out-of-fold predictions for label issues.", flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "A training run predicting every example.",
                    flag_values=FLAGS)
flags.DEFINE_string("model", None, "An exported model predicting every example.",
                    flag_values=FLAGS)
flags.DEFINE_float("label_issue_share", 0.01, "Share of the examples listed as label issues.",
                   lower_bound=0.0, upper_bound=1.0, flag_values=FLAGS)
flags.DEFINE_float("label_issue_threshold", None, "Score a label issue passes: spreads from "
                   "the predicted age (default 3), or years for a head without a spread "
                   "(default 15).", lower_bound=0.0, flag_values=FLAGS)
flags.DEFINE_bool("exclude_label_issues", False, "List the label issues in exclude.txt too.",
                  flag_values=FLAGS)


def _model_flags() -> list[tuple[str, str]]:
  """The model flags given, as ``(flag, value)``; more than one is a usage error."""
  given = [(f"--{name}", FLAGS[name].value) for name in ("protocol_root", "workdir", "model")
           if FLAGS[name].value]
  if len(given) > 1:
    raise UsageError(f"{' and '.join(f for f, _ in given)}: give one source of predictions")
  if FLAGS.exclude_label_issues and not given:
    raise UsageError("--exclude_label_issues needs predictions: --protocol_root, --workdir "
                     "or --model")
  return given


def _main(args: list[str]) -> None:
  del args  # none: cli.run refuses them
  # pylint: disable=import-outside-toplevel
  import dataclasses
  import os

  from agejax.auditing import audit_report
  from agejax.auditing import dataset_audit
  from agejax.auditing import dataset_scan
  from agejax.auditing import findings
  from agejax.auditing import label_issues

  import ml_collections

  from agejax.data import catalog

  given = _model_flags()
  data_dir = FLAGS.data_dir or os.path.expanduser("~/tensorflow_datasets")
  # Generated datasets are built on first use, as training builds them.
  catalog.ensure_prepared(ml_collections.ConfigDict({"dataset": FLAGS.dataset,
                                                     "data_dir": data_dir}))
  models = None
  if given:
    splits = sorted(catalog.prepared_builder(FLAGS.dataset, data_dir).info.splits)
    flag, path = given[0]
    models = (label_issues.protocol_models(path, FLAGS.dataset, splits)
              if flag == "--protocol_root" else
              label_issues.single_model(path, flag, FLAGS.dataset, splits))
    for note in models.notes:
      print(note)
  scan = dataset_scan.scan(FLAGS.dataset, data_dir, predictor=(
      label_issues.predictor_source(models) if models else None))
  settings = findings.Settings(max_distance=FLAGS.max_distance,
                               min_correlation=FLAGS.min_correlation,
                               label_issue_share=FLAGS.label_issue_share)
  if FLAGS.label_issue_threshold is not None:
    settings = dataclasses.replace(settings, label_issue_spreads=FLAGS.label_issue_threshold,
                                   label_issue_years=FLAGS.label_issue_threshold)
  doc, excluded = dataset_audit.audit(scan, settings,
                                      models=models,
                                      exclude_label_issues=FLAGS.exclude_label_issues)
  paths = audit_report.write(FLAGS.output, doc, scan, data_dir, excluded)
  print(doc["summary"])
  print(f"written: {paths[audit_report.HTML_FILE]}, " + ", ".join(
      os.path.basename(p) for name, p in paths.items() if name != audit_report.HTML_FILE))


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.audit",
                 required=("dataset", "output"))


if __name__ == "__main__":
  sys.exit(main())
