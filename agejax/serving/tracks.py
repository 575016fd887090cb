"""Faces linked across video frames, and one age per person.

Detections are linked by where each live track's face should be now: its
last centre moved on at its last velocity (centre pixels per frame, zero
for a track seen once) for the frames since. Each processed frame's boxes
are matched to the live tracks greedily, nearest first; a pair counts when
the box's centre is within ``max_shift`` face sides (the track's last box,
square root of its area) of that prediction and the two sizes are within a
factor of ``max_scale``. An unmatched box starts a new track, and a track
unmatched for more than ``max_missed`` processed frames ends. That is the
whole tracker (a few dozen lines, no dependency): a track is for one age
per person, not identity through occlusions. The velocity is what lets
``--every=N`` skip frames: a face walking 3 px a frame moves 45 px between
processed frames at ``--every=15``, more than half of a 70 px face, where
matching by overlap alone (IoU >= 0.3) loses it.

A track's age is the weighted median of its frames' ages, weights
``1 / max(spread, 0.5)^2`` (the frames the model is surest of count most,
and a few blurred or turned frames cannot pull it as they would a mean);
its spread is the same weighted median of the frames' spreads.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from agejax.evaluation import intervals


def ious(box: np.ndarray, others: np.ndarray) -> np.ndarray:
  """Intersection over union of one ``[x1, y1, x2, y2]`` box with each row of ``others`` [N, 4]."""
  w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
  h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
  inter = w * h
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  union = area(box) + area(others) - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
  """Intersection over union of two ``[x1, y1, x2, y2]`` boxes."""
  return float(ious(np.asarray(a[:4], np.float64), np.asarray([b[:4]], np.float64))[0])


def weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
  """The smallest value at which the cumulative weight reaches half the total."""
  values, weights = np.asarray(values, np.float64), np.asarray(weights, np.float64)
  order = np.argsort(values, kind="stable")
  cumulative = np.cumsum(weights[order])
  return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def combine(ages: Sequence[float], spreads: Sequence[float]) -> tuple[float, float]:
  """A track's ``(age, spread)`` from its frames' (module doc)."""
  weights = 1.0 / np.maximum(np.asarray(spreads, np.float64), intervals.MIN_SPREAD) ** 2
  return weighted_median(ages, weights), weighted_median(spreads, weights)


@dataclasses.dataclass
class Track:
  """One face followed through frames."""
  id: int
  first_frame: int
  last_frame: int
  box: list[float]
  missed: int = 0
  velocity: tuple[float, float] = (0.0, 0.0)  # centre pixels per frame
  ages: list[float] = dataclasses.field(default_factory=list)
  spreads: list[float] = dataclasses.field(default_factory=list)

  def predicted_centre(self, frame: int) -> tuple[float, float]:
    (x, y), elapsed = _centre(self.box), frame - self.last_frame
    return x + self.velocity[0] * elapsed, y + self.velocity[1] * elapsed

  def summary(self) -> dict:
    age, spread = combine(self.ages, self.spreads) if self.ages else (float("nan"),) * 2
    return {"track": self.id, "first_frame": self.first_frame, "last_frame": self.last_frame,
            "frames": len(self.ages), "age": age, "spread": spread}


def _centre(box: Sequence[float]) -> tuple[float, float]:
  return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _side(box: Sequence[float]) -> float:
  return max(float(np.sqrt(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))), 1e-6)


class Tracker:
  """Greedy matching to predicted positions, with a short memory (module doc)."""

  def __init__(self, max_shift: float = 1.0, max_scale: float = 2.0, max_missed: int = 5):
    self.max_shift, self.max_scale, self.max_missed = max_shift, max_scale, max_missed
    self.live: list[Track] = []
    self.all: list[Track] = []

  def distance(self, track: Track, frame: int, box: Sequence[float]) -> float:
    """How far ``box`` is from where ``track`` should be, in face sides (inf: too unlike)."""
    side, other = _side(track.box), _side(box)
    if max(side, other) > self.max_scale * min(side, other):
      return float("inf")
    (px, py), (x, y) = track.predicted_centre(frame), _centre(box)
    return float(np.hypot(x - px, y - py)) / side

  def update(self, frame: int, boxes: Sequence[Sequence[float]]) -> list[Track]:
    """The track of each box of ``frame``, in the boxes' order."""
    pairs = sorted((self.distance(t, frame, b), i, j) for i, t in enumerate(self.live)
                   for j, b in enumerate(boxes))
    assigned: dict[int, Track] = {}
    used = set()
    for distance, i, j in pairs:
      if distance > self.max_shift:
        break
      if i in used or j in assigned:
        continue
      used.add(i)
      assigned[j] = self.live[i]
    for j, box in enumerate(boxes):
      track = assigned.get(j)
      if track is None:
        track = Track(len(self.all), frame, frame, list(box))
        self.all.append(track)
        self.live.append(track)
      elif frame > track.last_frame:
        (x0, y0), (x1, y1) = _centre(track.box), _centre(box)
        elapsed = frame - track.last_frame
        track.velocity = ((x1 - x0) / elapsed, (y1 - y0) / elapsed)
      track.box, track.last_frame, track.missed = list(box), frame, -1
      assigned[j] = track
    for track in self.live:
      track.missed += 1
    self.live = [t for t in self.live if t.missed <= self.max_missed]
    return [assigned[j] for j in range(len(boxes))]
