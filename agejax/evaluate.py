r"""Evaluate a trained run's checkpoint on one or more dataset splits.

  python -m agejax.evaluate --workdir=DIR [--checkpoint=best|latest|STEP] \
      [--dataset=NAME:SPLIT ...] [--tta=none|flip] [--data_dir=D] \
      [--label=FEATURE] [--label_std=FEATURE] [--batch_size=B] \
      [--bands=0-12,13-17,18-24,25-34,35-44,45-54,55-64,65+] \
      [--attribute=FEATURE ...] [--resamples=1000] \
      [--calibrate_on=SPLIT|NAME:SPLIT] [--coverage=0.9]

Prints MAE, RMSE, bias, CS@5 (and the epsilon-error where the labels carry a
std) per split, then each split's age card (MAE and bias per age band,
FATE's MAE 18-30, challenge-age and band-membership rates, MAE per
gender/race/--attribute group, all with 95% bootstrap intervals), and
writes JSON, predictions, figures and TensorBoard summaries under DIR/eval.
--calibrate_on fits split-conformal age intervals at --coverage on that
split, prints their realised coverage on each evaluated split, and keeps
them in the run (DIR/calibration.json), from where agejax.export writes them
into model.json and agejax.predict prints them. See
agejax.evaluation.evaluate_run for the labels, the file names and what each
file holds. Exit codes: 0 done, 2 bad flags, config
or checkpoint.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from agejax import cli
from agejax.errors import ConfigError
from agejax.evaluation import age_card
from agejax.evaluation import conformal

FLAGS = cli.new_flags()
flags.DEFINE_string("workdir", None, "Training workdir to evaluate.", flag_values=FLAGS)
flags.DEFINE_string("checkpoint", "best", "best, latest or a step number.", flag_values=FLAGS)
flags.DEFINE_multi_string(
    "dataset", None, "NAME[:SPLIT], repeatable; default: the run's data.dataset:eval_split.",
    flag_values=FLAGS)
flags.DEFINE_enum("tta", None, ("none", "flip"),
                  "Test-time augmentation; default: the run's data.eval_flip_tta.",
                  flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data_dir; default: the run's.", flag_values=FLAGS)
flags.DEFINE_string("label", None, "Label feature; default: the run's, or the dataset's "
                    "supervised target.", flag_values=FLAGS)
flags.DEFINE_string("label_std", None, "Label std feature for the epsilon-error; '' for none.",
                    flag_values=FLAGS)
flags.DEFINE_integer("batch_size", None, "Global batch; default: the run's.", flag_values=FLAGS)
flags.DEFINE_string("bands", ",".join(map(age_card.band_label, age_card.DEFAULT_BANDS)),
                    "The age card's bands of the true age: LO-HI or LO+, comma-separated.",
                    flag_values=FLAGS)
flags.DEFINE_multi_string("attribute", [], "A dataset feature the age card also groups by "
                          "(gender, race and identity are read where present).",
                          flag_values=FLAGS)
flags.DEFINE_integer("resamples", age_card.RESAMPLES, "Bootstrap resamples of the age card.",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string("calibrate_on", None, "SPLIT or NAME:SPLIT to fit calibrated age "
                    "intervals on (split-conformal); kept in the run for export.",
                    flag_values=FLAGS)
flags.DEFINE_float("coverage", conformal.DEFAULT_COVERAGE,
                   "Target coverage of the calibrated intervals, in (0, 1).",
                   flag_values=FLAGS)


def _main(args: list[str]) -> None:
  del args  # none: cli.run refuses them
  import jax  # pylint: disable=import-outside-toplevel

  from agejax.evaluation import evaluate_run  # pylint: disable=import-outside-toplevel

  tta = None if FLAGS.tta is None else FLAGS.tta == "flip"
  try:
    bands = age_card.parse_bands(FLAGS.bands)
  except ValueError as e:
    raise ConfigError("--bands", str(e)) from e
  if not 0.0 < FLAGS.coverage < 1.0:
    raise ConfigError("--coverage", f"must lie in (0, 1), got {FLAGS.coverage}")
  results = evaluate_run.evaluate_run(
      FLAGS.workdir, FLAGS.checkpoint, FLAGS.dataset, tta, data_dir=FLAGS.data_dir,
      label=FLAGS.label, label_std=FLAGS.label_std, batch_size=FLAGS.batch_size, bands=bands,
      extra_attributes=FLAGS.attribute, resamples=FLAGS.resamples,
      calibrate_on=FLAGS.calibrate_on, coverage=FLAGS.coverage)
  if jax.process_index() == 0:
    print(evaluate_run.format_table(results))
    for key, record in results.items():
      print(f"\n{key}: " + age_card.format_card(record["card"]))
      if "calibration" in record:
        print(conformal.format_calibration(record["calibration"]))
    print(f"\nwritten to {os.path.join(FLAGS.workdir, evaluate_run.EVAL_DIR)}")


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.evaluate", required=("workdir",))


if __name__ == "__main__":
  sys.exit(main())
