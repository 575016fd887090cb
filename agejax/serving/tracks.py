"""Faces linked across video frames, and one age per person.

Detections are linked by IoU: each processed frame's boxes are matched to
the live tracks' last boxes greedily, highest IoU first, a pair counting
when its IoU is at least ``min_iou``; an unmatched box starts a new track,
and a track unmatched for more than ``max_missed`` processed frames ends.
That is the whole tracker (a few dozen lines, no dependency): at the frame
rates agejax processes, a face moves little between frames, and what a
track is for here is one age per person, not identity through occlusions.

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


def iou(a: Sequence[float], b: Sequence[float]) -> float:
  """Intersection over union of two ``[x1, y1, x2, y2]`` boxes."""
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


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
  ages: list[float] = dataclasses.field(default_factory=list)
  spreads: list[float] = dataclasses.field(default_factory=list)

  def summary(self) -> dict:
    age, spread = combine(self.ages, self.spreads) if self.ages else (float("nan"),) * 2
    return {"track": self.id, "first_frame": self.first_frame, "last_frame": self.last_frame,
            "frames": len(self.ages), "age": age, "spread": spread}


class Tracker:
  """Greedy IoU matching with a short memory (module doc)."""

  def __init__(self, min_iou: float = 0.3, max_missed: int = 5):
    self.min_iou, self.max_missed = min_iou, max_missed
    self.live: list[Track] = []
    self.all: list[Track] = []

  def update(self, frame: int, boxes: Sequence[Sequence[float]]) -> list[Track]:
    """The track of each box of ``frame``, in the boxes' order."""
    pairs = sorted(((iou(t.box, b), i, j) for i, t in enumerate(self.live)
                    for j, b in enumerate(boxes)), reverse=True)
    assigned: dict[int, Track] = {}
    used = set()
    for overlap, i, j in pairs:
      if overlap < self.min_iou:
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
      track.box, track.last_frame, track.missed = list(box), frame, -1
      assigned[j] = track
    for track in self.live:
      track.missed += 1
    self.live = [t for t in self.live if t.missed <= self.max_missed]
    return [assigned[j] for j in range(len(boxes))]
