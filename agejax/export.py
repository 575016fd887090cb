r"""Write a trained run's model as a self-contained bundle for prediction.

  python -m agejax.export --workdir=DIR --output=OUT [--checkpoint=best|latest|STEP] \
      [--margin=M] [--stored_size=S] [--overwrite]

``agejax.inference.load(OUT)`` and ``python -m agejax.predict --model=OUT``
then need neither the training config nor the dataset (the format:
agejax.serving.bundle). Exit codes: 0 written, 2 bad flags, workdir or an
existing bundle without --overwrite.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from agejax import cli

FLAGS = cli.new_flags()
flags.DEFINE_string("workdir", None, "Training run directory.", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Bundle directory to write.", flag_values=FLAGS)
flags.DEFINE_string("checkpoint", "best", "best (lowest validation metric), latest, or a step.",
                    flag_values=FLAGS)
flags.DEFINE_float("margin", None, "Face box margin per side; default: the dataset's.",
                   flag_values=FLAGS)
flags.DEFINE_integer("stored_size", None, "Side of the stored face crops; default: the "
                     "dataset's.", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace a bundle already in --output.", flag_values=FLAGS)


def _main(args: list[str]) -> None:
  del args  # none: cli.run refuses them
  from agejax.serving import export  # pylint: disable=import-outside-toplevel

  meta = export.export(FLAGS.workdir, FLAGS.output, FLAGS.checkpoint, margin=FLAGS.margin,
                       stored_size=FLAGS.stored_size, overwrite=FLAGS.overwrite)
  crop = meta["crop"]
  print(f"exported {meta['model']['arch']} ({meta['head']} head) from step "
        f"{meta['source']['step']} of {FLAGS.workdir} to {os.path.abspath(FLAGS.output)}")
  print(f"input: face crops with margin {crop['margin']} stored at {crop['stored_size']} px "
        f"({crop['source']}), centre {meta['image_size']} px, {meta['preprocessing']} "
        f"preprocessing")


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.export",
                 required=("workdir", "output"), user_errors=(ValueError,))


if __name__ == "__main__":
  sys.exit(main())
