"""``python -m agejax.benchmark [NAME ...] [--output FILE] [--repeats N] [--platform P]``.

Runs the named sub-benchmarks (all when none is named), in the order
step, peer, input, build, e2e, printing one table row per result and
appending one JSON object per result to ``--output`` (JSON lines; stdout by
default, with the table then on stderr). ``peer`` times agejax's compiled
step alternately with the Keras peer, so asking for ``peer`` runs ``step``
too (one compilation serves both).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Sequence

NAMES = ("step", "peer", "input", "build", "e2e")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m agejax.benchmark", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("names", nargs="*", metavar="NAME",
                 help=f"sub-benchmarks to run, from {', '.join(NAMES)} (default: all)")
  p.add_argument("--output", default="", help="JSON lines file to append to (default: stdout)")
  p.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
  p.add_argument("--platform", choices=("cpu", "gpu"), default=None,
                 help="JAX platform (default: JAX's choice)")
  g = p.add_argument_group("step and peer")
  g.add_argument("--arch", default="resnet50")
  g.add_argument("--width", type=int, default=64, help="model.width (step only; 64 = published)")
  g.add_argument("--image_size", type=int, default=112)
  g.add_argument("--batch_size", type=int, default=16)
  g.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                 help="compute dtype (default: bfloat16 on gpu, else float32)")
  g.add_argument("--steps", type=int, default=5, help="train steps per timed run")
  g.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
  g.add_argument("--matmul_size", type=int, default=2048, help="side of the peak matmul")
  g.add_argument("--peer_jit", action="store_true", help="Keras compile(jit_compile=True)")
  g = p.add_argument_group("input")
  g.add_argument("--input_images", type=int, default=512, help="rows of the generated release")
  g.add_argument("--input_image_size", type=int, default=224)
  g.add_argument("--input_batch_size", type=int, default=32)
  g.add_argument("--input_batches", type=int, default=30, help="batches per timed run")
  g = p.add_argument_group("build")
  g.add_argument("--build_images", type=int, default=1000, help="rows of the generated release")
  g = p.add_argument_group("e2e")
  g.add_argument("--e2e_config", default=None, help="config file (default: configs/demo.py)")
  g.add_argument("--e2e_steps", type=int, default=100)
  g.add_argument("--e2e_data_dir", default="", help="TFDS data_dir (default: the config's)")
  args = p.parse_args(argv)
  # Checked here: argparse's choices misbehave with nargs="*" and no names.
  unknown = [n for n in args.names if n not in NAMES]
  if unknown:
    p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
  if args.dtype is None:
    args.dtype = "bfloat16" if args.platform == "gpu" else "float32"
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  if args.platform:
    # Before JAX is imported (below), and inherited by the peer's child.
    os.environ["JAX_PLATFORMS"] = args.platform
  # Imported after the platform is chosen: they import JAX.
  from agejax.benchmark import build  # pylint: disable=import-outside-toplevel
  from agejax.benchmark import common  # pylint: disable=import-outside-toplevel
  from agejax.benchmark import e2e  # pylint: disable=import-outside-toplevel
  from agejax.benchmark import peer  # pylint: disable=import-outside-toplevel
  from agejax.benchmark import pipeline  # pylint: disable=import-outside-toplevel
  from agejax.benchmark import step  # pylint: disable=import-outside-toplevel

  wanted = set(args.names or NAMES)
  if "peer" in wanted:
    wanted.add("step")
  out = common.Output(args.output or None)
  protocol = dict(steps=args.steps, repeats=args.repeats, warmup=args.warmup)
  shape = dict(arch=args.arch, image_size=args.image_size, batch_size=args.batch_size,
               dtype=args.dtype)
  try:
    step_settings = step.StepSettings(width=args.width, matmul_size=args.matmul_size,
                                      **shape, **protocol)
    compiled = None
    if "step" in wanted:
      compiled = step.compile_step(step_settings)
      out.write(step.run(step_settings, compiled), step.COLUMNS)
    if "peer" in wanted:
      peer_settings = peer.PeerSettings(jit_compile=args.peer_jit, **shape, **protocol)
      same_network = peer.comparable(dataclasses.asdict(step_settings), peer_settings)
      out.write(peer.run(peer_settings, compiled.k_steps if same_network else None),
                peer.COLUMNS)
    if "input" in wanted:
      out.write(pipeline.run(pipeline.InputSettings(
          images=args.input_images, image_size=args.input_image_size,
          batch_size=args.input_batch_size, batches=args.input_batches,
          repeats=args.repeats)), pipeline.COLUMNS)
    if "build" in wanted:
      out.write(build.run(build.BuildSettings(images=args.build_images)), build.COLUMNS)
    if "e2e" in wanted:
      settings = e2e.E2ESettings(steps=args.e2e_steps, data_dir=args.e2e_data_dir)
      if args.e2e_config:
        settings = dataclasses.replace(settings, config=args.e2e_config)
      out.write(e2e.run(settings), e2e.COLUMNS)
  finally:
    out.close()


if __name__ == "__main__":
  sys.exit(main())
