"""Face boxes in ordinary photos, with a detector whose weights ship in its wheel.

The detector is MTCNN (Zhang et al. 2016, a cascade of three small CNNs) from
the ``mtcnn`` package, which carries its trained weights inside the package
(``mtcnn/assets/weights/*.lz4``) and runs on TensorFlow, already a dependency
of the input pipeline. Nothing is downloaded at run time. It was chosen over
OpenCV's Haar cascade because it scores every box (so a threshold can reject
false positives) and because opencv-python 5 no longer ships the cascade files.

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

Box = tuple[float, float, float, float, float]  # x1, y1, x2, y2, score


@dataclasses.dataclass(frozen=True)
class DetectorOptions:
  """How photos are searched for faces.

  Attributes:
    max_side: photos whose longer side exceeds this are scaled down to it
      before detection (boxes come back in original pixels).
    min_face_size: smallest face side looked for, in pixels of the scaled
      photo; smaller values search more pyramid levels (slower).
    min_score: boxes MTCNN scores below this are dropped; its last stage
      already drops those below 0.8, and 0.9 removes most of what remains of
      faces in wallpaper and foliage.
    scale_factor: ratio between successive levels of MTCNN's image pyramid.
  """
  max_side: int = 1024
  min_face_size: int = 20
  min_score: float = 0.9
  scale_factor: float = 0.709


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


def detect(image: np.ndarray, options: DetectorOptions | None = None) -> list[Box]:
  """The faces in an RGB photo, largest first.

  Args:
    image: uint8 [H, W, 3] RGB (grayscale and RGBA are accepted too).
    options: detection parameters; the defaults suit photos of any size.

  Returns:
    ``(x1, y1, x2, y2, score)`` per face in ``image``'s pixel edges (x2, y2
    exclusive), clipped to the image, sorted by box area, largest first.
  """
  options = options or DetectorOptions()
  image = _as_rgb(image)
  height, width = image.shape[:2]
  # MTCNN's first network needs a 12 x 12 window; smaller images hold no face.
  if min(height, width) < 12:
    return []
  small, scale = _scaled(image, options.max_side)
  rows = _mtcnn().detect_faces(
      small, box_format="xyxy", output_type="numpy", fit_to_image=True,
      min_face_size=options.min_face_size, scale_factor=options.scale_factor)
  boxes = []
  # Columns: image index, x1, y1, x2, y2, score, then five landmarks.
  for row in np.asarray(rows, np.float64).reshape(-1, 16):
    score = float(row[5])
    if score < options.min_score:
      continue
    x1, y1, x2, y2 = (float(v) / scale for v in row[1:5])
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    if x2 > x1 and y2 > y1:
      boxes.append((x1, y1, x2, y2, score))
  boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
  return boxes
