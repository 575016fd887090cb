r"""Ages of the faces in photos and videos.

  python -m agejax.predict --model=EXPORTED_DIR PATH [PATH ...]
  python -m agejax.predict --workdir=RUN_DIR [--checkpoint=best] PATH [PATH ...]
  python -m agejax.predict --model=DIR VIDEO.mp4|CAMERA_INDEX|URL [--every=N] [--json] \
      [--annotate=OUT_DIR]

PATHs are image files or folders (searched recursively). Each face found is
cropped exactly as the training crops were and its age and spread printed,
one line per face (``photos/a.jpg, 182 64 265 171, 34.2, 5.1``, then the
calibrated interval ``, 28.1-40.3 (90%)`` when the model has one), or one
JSON object per file with --json. See agejax.serving.photos for the details.
A video (a file OpenCV decodes, a camera index, a stream URL) gives one
record per processed frame with each face's track, then one age per track
(agejax.serving.video); --annotate writes OUT_DIR/<name>.mp4.
Exit codes: 0 done, 1 no file could be read, 2 bad flags or model.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from agejax import cli
from agejax.errors import RunFailed, UsageError

FLAGS = cli.new_flags()
flags.DEFINE_string("model", None, "A model written by python -m agejax.export.",
                    flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "A training run directory (instead of --model).",
                    flag_values=FLAGS)
flags.DEFINE_string("checkpoint", "best", "With --workdir: best, latest or a step number.",
                    flag_values=FLAGS)
flags.DEFINE_bool("json", False, "One JSON object per file.", flag_values=FLAGS)
flags.DEFINE_string("annotate", None, "Write copies with boxes and ages drawn into this folder.",
                    flag_values=FLAGS)
flags.DEFINE_bool("no_detect", False, "The images are face crops already: one face each.",
                  flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 16, "Faces per compiled batch.", flag_values=FLAGS)
flags.DEFINE_integer("every", 1, "Videos: process every N-th frame.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_bool("trust_model", False, "Run a SavedModel without checking its ops (one you "
                  "built yourself: a SavedModel is a program).", flag_values=FLAGS)
flags.DEFINE_string("detector", None, "Face detector: blazeface_tiled, blazeface_full, "
                    "blazeface or mtcnn (default: blazeface_tiled for photos, blazeface_full "
                    "for videos and cameras; see README, Face detectors).", flag_values=FLAGS)
flags.DEFINE_integer("max_side", 1024, "MTCNN: photos are scaled to this longer side first.",
                     flag_values=FLAGS)
flags.DEFINE_integer("min_face_size", 20, "MTCNN: smallest face looked for, pixels of the "
                     "scaled photo.", flag_values=FLAGS)
flags.DEFINE_float("min_score", None, "Detections scored below this are dropped (default: "
                   "the detector's own: mtcnn 0.9, blazeface 0.5, blazeface_full and _tiled 0.6).",
                   flag_values=FLAGS)


def _main(paths: list[str]) -> None:
  if bool(FLAGS.model) == bool(FLAGS.workdir):
    raise UsageError("give exactly one of --model and --workdir")
  if not paths:
    raise UsageError("name at least one image file or folder")
  # pylint: disable=import-outside-toplevel
  from agejax.serving import face_detect
  from agejax.serving import inference
  from agejax.serving import photos
  from agejax.serving import video

  videos = [p for p in paths if video.is_video(p)]
  if videos and (len(videos) != len(paths) or len(videos) > 1):
    raise UsageError("give one video (or camera) at a time, without photos")
  detector = FLAGS.detector or (face_detect.DEFAULT_VIDEO_DETECTOR if videos
                                else face_detect.DEFAULT_DETECTOR)
  try:
    face_detect.check(detector)
  except ValueError as e:
    raise UsageError(f"--detector: {e}") from e
  try:
    predictor = inference.load(FLAGS.model or FLAGS.workdir, checkpoint=FLAGS.checkpoint,
                               batch_size=FLAGS.batch_size, trust_model=FLAGS.trust_model)
  except (FileNotFoundError, ValueError) as e:
    raise UsageError(f"cannot load the model: {e}") from e
  options = face_detect.DetectorOptions(detector=detector, max_side=FLAGS.max_side,
                                        min_face_size=FLAGS.min_face_size,
                                        min_score=FLAGS.min_score)
  if videos:
    _predict_video(predictor, videos[0], options)
    return
  files = readable = faces = 0
  for record in photos.iter_predictions(predictor, paths, detect=not FLAGS.no_detect,
                                         annotate_dir=FLAGS.annotate, options=options):
    files += 1
    readable += record["error"] is None
    faces += len(record["faces"])
    if FLAGS.json:
      print(json.dumps(record), flush=True)
    else:
      print("\n".join(photos.format_lines(record)), flush=True)
  if not readable:
    raise RunFailed("no image could be read")
  # The summary goes to stderr with --json: stdout stays one JSON object per line.
  print(f"{files} file(s): {faces} face(s), {files - readable} unreadable",
        file=sys.stderr if FLAGS.json else sys.stdout, flush=True)


def _predict_video(predictor, source: str, options) -> None:
  """One line (or JSON object) per processed frame, then one per track (agejax.serving.video)."""
  from agejax.serving import video  # pylint: disable=import-outside-toplevel

  name = os.path.splitext(os.path.basename(source.rstrip("/")))[0] or "stream"
  annotate = os.path.join(FLAGS.annotate, name + ".mp4") if FLAGS.annotate else None
  try:
    opened = video.open_video(source)
  except video.Unreadable as e:
    raise RunFailed(str(e)) from e
  summary = None
  for record in video.iter_video(predictor, opened, every=FLAGS.every, options=options,
                                 annotate=annotate):
    summary = record
    print(json.dumps(record) if FLAGS.json else "\n".join(video.format_lines(record)),
          flush=True)
  if summary["frames_read"] == 0:
    raise RunFailed(f"{source}: opened, but no frame could be decoded")
  if video.ended_early(summary):
    raise RunFailed(f"{source}: ended at frame {summary['frames_read']} of the "
                    f"{summary['frame_count']} its header promises (truncated, or the stream "
                    f"dropped); the frames read are reported above"
                    + (f" and in {annotate}" if annotate else ""))


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, FLAGS, __doc__, argv, prog="agejax.predict", takes_args=True)


if __name__ == "__main__":
  sys.exit(main())
