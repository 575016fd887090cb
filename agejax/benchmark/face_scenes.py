"""Generated scenes with faces at known boxes: what the detectors and video speed are measured on.

A scene is a 640 x 480 frame: a background from scikit-image's photographs
(coffee, chelsea, rocket, horse, hubble_deep_field, resized) with copies of
the astronaut's head (``skimage.data.astronaut()``, rows 20-240, columns
120-310) pasted at random sizes, mirrored or not, brighter or darker. Each
copy's face box is the astronaut's labelled face (:data:`ASTRONAUT_FACE`)
carried through the same scaling and placement, so recall and false boxes
are measured against boxes no detector drew. The scikit-image photos with
faces carry labels of their own (:data:`LABELLED_PHOTOS`), drawn by eye
from brow to chin and ear to nose tip.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

ASTRONAUT_FACE = (178, 72, 272, 182)  # x1, y1, x2, y2 in astronaut(); as tests/test_predict.py
HEAD = (120, 20, 310, 240)  # the pasted region: the face with hair, neck and background
# scikit-image photos: how many faces each holds, and their boxes.
LABELLED_PHOTOS = {
    "astronaut": [ASTRONAUT_FACE],
    "camera": [(190, 110, 262, 198)],  # the cameraman, three-quarter profile, grayscale
    "coffee": [], "chelsea": [], "rocket": [], "horse": [], "hubble_deep_field": [],
}
BACKGROUNDS = ("coffee", "chelsea", "rocket", "horse", "hubble_deep_field")
SIZE = (640, 480)  # width, height


def photo(name: str) -> np.ndarray:
  """A scikit-image photograph as uint8 RGB."""
  from skimage import data  # pylint: disable=import-outside-toplevel
  image = np.asarray(getattr(data, name)())
  if image.dtype == bool:
    image = image.astype(np.uint8) * 255
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return np.ascontiguousarray(image[..., :3])


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
  import cv2  # pylint: disable=import-outside-toplevel
  return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def background(name: str) -> np.ndarray:
  return _resize(photo(name), *SIZE)


def head(height: int, mirror: bool, gain: float) -> tuple[np.ndarray, tuple[float, ...]]:
  """The astronaut's head scaled to ``height`` pixels, and its face box within."""
  x0, y0, x1, y1 = HEAD
  scale = height / (y1 - y0)
  width = round((x1 - x0) * scale)
  patch = _resize(photo("astronaut")[y0:y1, x0:x1], width, height)
  fx1, fy1, fx2, fy2 = ((ASTRONAUT_FACE[0] - x0) * scale, (ASTRONAUT_FACE[1] - y0) * scale,
                        (ASTRONAUT_FACE[2] - x0) * scale, (ASTRONAUT_FACE[3] - y0) * scale)
  if mirror:
    patch = patch[:, ::-1]
    fx1, fx2 = width - fx2, width - fx1
  patch = np.clip(patch.astype(np.float32) * gain, 0, 255).astype(np.uint8)
  return patch, (fx1, fy1, fx2, fy2)


def scene(rng: np.random.Generator, faces: int) -> tuple[np.ndarray, list[tuple[float, ...]]]:
  """One 640 x 480 frame with ``faces`` heads (face sides about 40-140 px) and their face boxes."""
  frame = background(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]).copy()
  boxes: list[tuple[float, ...]] = []
  taken: list[tuple[int, int, int, int]] = []
  for _ in range(faces):
    for _attempt in range(50):  # heads do not overlap
      patch, (fx1, fy1, fx2, fy2) = head(int(rng.integers(80, 280)), bool(rng.integers(2)),
                                         float(rng.uniform(0.7, 1.2)))
      h, w = patch.shape[:2]
      x, y = int(rng.integers(0, SIZE[0] - w + 1)), int(rng.integers(0, SIZE[1] - h + 1))
      if all(x + w <= a or a + c <= x or y + h <= b or b + d <= y for a, b, c, d in taken):
        break
    else:
      continue
    frame[y:y + h, x:x + w] = patch
    taken.append((x, y, w, h))
    boxes.append((x + fx1, y + fy1, x + fx2, y + fy2))
  return frame, boxes


def walking(faces: int, frames: int) -> Iterator[tuple[np.ndarray, list[tuple[float, ...]]]]:
  """Frames of ``faces`` heads (160 px) crossing a fixed background, with their face boxes.

  The heads take the top and bottom lanes in turn; a lane of n heads is cut
  into n equal stretches, and each head walks back and forth along its own,
  so heads never cover each other and every face stays whole in the frame.
  """
  still = background("coffee")
  patch, (fx1, fy1, fx2, fy2) = head(160, False, 1.0)
  h, w = patch.shape[:2]
  per_lane = -(-faces // 2) if faces > 1 else 1
  stretch = SIZE[0] // per_lane
  span = stretch - w
  if span <= 0:
    raise ValueError(f"{faces} heads of {w} px do not fit side by side in {SIZE[0]} px")
  for t in range(frames):
    frame = still.copy()
    boxes = []
    for k in range(faces):
      offset = (t * 3 + k * span // max(faces, 1)) % (2 * span)
      x = (k // 2) * stretch + (offset if offset <= span else 2 * span - offset)
      y = (k % 2) * (SIZE[1] - h)
      frame[y:y + h, x:x + w] = patch
      boxes.append((x + fx1, y + fy1, x + fx2, y + fy2))
    yield frame, boxes


def write_video(path: str, faces: int, frames: int, fps: float = 25.0) -> None:
  """:func:`walking` as an MP4 file OpenCV reads back."""
  import cv2  # pylint: disable=import-outside-toplevel
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, SIZE)
  try:
    for frame, _ in walking(faces, frames):
      writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
  finally:
    writer.release()


def match(found: list, truth: list, min_iou: float = 0.5) -> tuple[int, int]:
  """``(true positives, false boxes)``: greedy one-to-one matching at ``min_iou``."""
  from agejax.serving import tracks  # pylint: disable=import-outside-toplevel
  pairs = sorted(((tracks.iou(f[:4], t), i, j) for i, f in enumerate(found)
                  for j, t in enumerate(truth)), reverse=True)
  used_found, used_truth = set(), set()
  for overlap, i, j in pairs:
    if overlap < min_iou:
      break
    if i not in used_found and j not in used_truth:
      used_found.add(i)
      used_truth.add(j)
  return len(used_truth), len(found) - len(used_found)
