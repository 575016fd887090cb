r"""The face age benchmark's protocol: train each split, test in and across datasets, one table.

  python -m agejax.protocol --config=configs/protocol_resnet50.py --benchmark=AgeDB \
      [--splits=0-4] [--cross=UTKFace,CLAP2016] --workdir_root=/runs/agedb \
      [--config.k=v ...]

``--benchmark`` and ``--cross`` take the benchmark's database names (AgeDB,
AFAD, CACD2000, CLAP2016, FG-NET, IMDB-CLEAN-FP-AGE, IMDB-EM-CNN, MORPH,
UTKFace: the ``facebase/<name>`` datasets of data_builders/facebase) or any
TFDS name stored as folders. Each split trains in WORKDIR_ROOT/split_<k>, an
ordinary run (resumable; a finished split is not retrained); the table goes
to WORKDIR_ROOT/protocol.md and protocol.json. See agejax.tools.protocol_runs.
Exit codes: 0 done, 2 bad flags or config.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from agejax import cli

FLAGS = cli.new_flags()
_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config file (get_config()).",
                                          lock_config=True, flag_values=FLAGS)
flags.DEFINE_string("benchmark", None, "The dataset to train and test on.", flag_values=FLAGS)
flags.DEFINE_string("splits", "0-4", "Benchmark splits to run: 0-4, or a list like 0,2.",
                    flag_values=FLAGS)
flags.DEFINE_list("cross", [], "Datasets each split's model is also tested on (their test "
                  "folders of the same split).", flag_values=FLAGS)
flags.DEFINE_string("workdir_root", None, "Each split trains in WORKDIR_ROOT/split_<k>.",
                    flag_values=FLAGS)


def _main(args: list[str]) -> None:
  del args  # none: cli.run refuses them
  from agejax.tools import protocol_runs  # pylint: disable=import-outside-toplevel

  doc = protocol_runs.run_protocol(_CONFIG.value.copy_and_resolve_references, FLAGS.benchmark,
                              FLAGS.workdir_root, protocol_runs.parse_splits(FLAGS.splits),
                              FLAGS.cross)
  print(protocol_runs.markdown(doc), end="")


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.protocol",
                 required=("config", "benchmark", "workdir_root"))


if __name__ == "__main__":
  sys.exit(main())
