"""Face boxes in photos and video frames, with detectors whose weights ship in their wheels.

Two families, chosen with ``DetectorOptions.detector`` (``--detector``):

- ``mtcnn``: MTCNN (Zhang et al. 2016, a cascade of three small CNNs over an
  image pyramid) from the ``mtcnn`` package, which carries its weights
  (``mtcnn/assets/weights/*.lz4``) and runs on TensorFlow. Thorough on
  photos of any size, about 0.2 s for a 512 x 512 photo on a 2-core CPU.
- ``blazeface`` and ``blazeface_full``: MediaPipe's BlazeFace
  (:mod:`agejax.serving.blazeface`), one pass of a small network over the
  frame scaled to 128 or 192 pixels, in the TFLite interpreter; tens of
  times faster, for video, but blind to faces under about a tenth of the
  frame's longer side. ``blazeface_tiled`` also runs the full-range model on
  2 x 2 overlapping tiles: five passes, and the small faces found.

The defaults are the ones ``python -m agejax.benchmark predict`` favours
(README, "Face detectors"): :data:`DEFAULT_DETECTOR` for photos,
:data:`DEFAULT_VIDEO_DETECTOR` for videos and cameras. Nothing is downloaded at run time. OpenCV's Haar
cascade was left out: it scores no box (no threshold can reject false
positives) and opencv-python 5 no longer ships the cascade files.

Photos are scaled down before detection so that a 24-megapixel picture costs
about what a 1-megapixel one does; boxes are mapped back to the original
pixels. Faces smaller than ``min_face_size`` pixels in the scaled image are
not looked for: at the default 20 of 1024 that is 2% of the longer side,
already far too few pixels for an age estimate.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
from PIL import Image

from agejax.serving import blazeface

Box = tuple[float, float, float, float, float]  # x1, y1, x2, y2, score

DETECTORS = ("blazeface_tiled", "blazeface_full", "blazeface", "mtcnn")
# The defaults, by `python -m agejax.benchmark predict` (README, "Face
# detectors"): on generated 640 x 480 scenes blazeface_tiled found 98% of
# faces in 25 ms a frame, blazeface_full 71% (96% of those over 60 px) in
# 6 ms, MTCNN all in 198 ms (2-core CPU, 2026-12-06). A photo is looked at once, so it gets the
# tiles; a video has 25 frames a second to keep up with and a track to
# bridge a missed frame, so it gets the single pass.
DEFAULT_DETECTOR = "blazeface_tiled"
DEFAULT_VIDEO_DETECTOR = "blazeface_full"
# Boxes scored below these are dropped unless DetectorOptions.min_score says
# otherwise. MTCNN's last stage already drops those below 0.8, and 0.9 removes
# most of what remains of faces in wallpaper and foliage; BlazeFace's are
# MediaPipe's own thresholds for each model.
MIN_SCORES = {"mtcnn": 0.9, **{name: blazeface.MODELS[model].min_score
                               for name, (model, _) in blazeface.DETECTORS.items()}}


@dataclasses.dataclass(frozen=True)
class DetectorOptions:
  """How photos are searched for faces.

  Attributes:
    detector: one of :data:`DETECTORS`.
    max_side: photos whose longer side exceeds this are scaled down to it
      before detection (boxes come back in original pixels).
    min_face_size: MTCNN: smallest face side looked for, in pixels of the
      scaled photo; smaller values search more pyramid levels (slower).
    min_score: boxes scored below this are dropped; None: the detector's
      own (:data:`MIN_SCORES`).
    scale_factor: MTCNN: ratio between successive levels of its image pyramid.
  """
  detector: str = DEFAULT_DETECTOR
  max_side: int = 1024
  min_face_size: int = 20
  min_score: float | None = None
  scale_factor: float = 0.709


def check(name: str) -> None:
  """Raises ValueError unless ``name`` is one of :data:`DETECTORS`."""
  if name not in DETECTORS:
    raise ValueError(f"unknown face detector {name!r}: expected one of {', '.join(DETECTORS)}")


@functools.lru_cache(maxsize=1)
def _mtcnn() -> Any:
  """The MTCNN networks, built once per process (about 0.2 s)."""
  # Imported here: TensorFlow is only paid for when a photo is searched.
  from mtcnn import MTCNN  # pylint: disable=g-import-not-at-top

  return MTCNN(stages="face_and_landmarks_detection", device="CPU:0")


def _as_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] from grayscale [H, W], [H, W, 1], RGB or RGBA."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f"expected a uint8 image, got {image.dtype}")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"expected an [H, W, 3] RGB image, got shape {image.shape}")
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]


def _scaled(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
  """``image`` with its longer side at most ``max_side``, and the scale used."""
  height, width = image.shape[:2]
  scale = min(1.0, max_side / max(height, width))
  if scale == 1.0:
    return image, 1.0
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  # PIL's bilinear filter widens with the reduction, so it averages instead of
  # aliasing fine texture into face-like patterns.
  small = Image.fromarray(image).resize(size, Image.BILINEAR)
  # The exact per-axis scale, so boxes map back without drifting by rounding.
  return np.asarray(small), size[0] / width


def _mtcnn_boxes(image: np.ndarray, options: DetectorOptions, min_score: float) -> list[Box]:
  # MTCNN's first network needs a 12 x 12 window; smaller images hold no face.
  if min(image.shape[:2]) < 12:
    return []
  small, scale = _scaled(image, options.max_side)
  rows = _mtcnn().detect_faces(
      small, box_format="xyxy", output_type="numpy", fit_to_image=True,
      min_face_size=options.min_face_size, scale_factor=options.scale_factor)
  # Columns: image index, x1, y1, x2, y2, score, then five landmarks.
  return [(*(float(v) / scale for v in row[1:5]), float(row[5]))
          for row in np.asarray(rows, np.float64).reshape(-1, 16) if row[5] >= min_score]


def detect(image: np.ndarray, options: DetectorOptions | None = None) -> list[Box]:
  """The faces in an RGB photo or frame, largest first.

  Args:
    image: uint8 [H, W, 3] RGB (grayscale and RGBA are accepted too).
    options: detection parameters; the defaults suit photos of any size.

  Returns:
    ``(x1, y1, x2, y2, score)`` per face in ``image``'s pixel edges (x2, y2
    exclusive), clipped to the image, sorted by box area, largest first.
  """
  options = options or DetectorOptions()
  check(options.detector)
  image = _as_rgb(image)
  height, width = image.shape[:2]
  min_score = MIN_SCORES[options.detector] if options.min_score is None else options.min_score
  if options.detector == "mtcnn":
    found = _mtcnn_boxes(image, options, min_score)
  else:
    found = blazeface.detector(options.detector)(image, min_score)
  boxes = []
  for x1, y1, x2, y2, score in found:
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    if x2 > x1 and y2 > y1:
      boxes.append((x1, y1, x2, y2, score))
  boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
  return boxes
