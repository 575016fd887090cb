r"""Ages of the faces in a video or a camera stream: ``agejax.predict VIDEO``.

Frames are read with OpenCV's ``VideoCapture`` (any file it decodes, a
camera index such as ``0``, or a stream URL); every ``every``-th frame is
searched for faces (``agejax.serving.face_detect``), each face is cropped by
the training rule, and faces are linked into tracks
(:mod:`agejax.serving.tracks`). Faces of consecutive frames go through the
network together, up to the predictor's batch size.

Each processed frame gives one record: ``frame`` (its index in the video),
``time`` (seconds), ``faces`` (``box``, ``score``, ``age``, ``spread``,
``track``). The end gives ``tracks``: per track its first and last frame,
the frames it was seen in, and its age and spread
(:func:`agejax.serving.tracks.combine`). ``annotate`` writes the processed
frames as a video (boxes, track id and the track's age so far).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from agejax.data import face_crop
from agejax.serving import face_detect
from agejax.serving import inference
from agejax.serving import tracks

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def is_video(path: str) -> bool:
  """A video file by its extension, a camera index, or a stream URL."""
  return (path.lower().endswith(VIDEO_EXTENSIONS) or path.isdigit()
          or "://" in path)


def _capture(source: str) -> Any:
  import cv2  # pylint: disable=import-outside-toplevel
  capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
  if not capture.isOpened():
    raise face_crop.UndecodableImage(f"{source}: OpenCV cannot open it as a video or camera")
  return capture


def frames(source: str, every: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
  """``(index, seconds, RGB frame)`` of every ``every``-th frame of ``source``."""
  import cv2  # pylint: disable=import-outside-toplevel
  capture = _capture(source)
  fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
  index = 0
  try:
    while True:
      ok, bgr = capture.read()
      if not ok:
        return
      if index % every == 0:
        yield index, (index / fps if fps > 0 else 0.0), bgr[:, :, ::-1].copy()
      index += 1
  finally:
    capture.release()


def _draw(frame: np.ndarray, faces: list[dict], tracker: tracks.Tracker) -> np.ndarray:
  import cv2  # pylint: disable=import-outside-toplevel
  bgr = np.ascontiguousarray(frame[:, :, ::-1])
  for face in faces:
    x1, y1, x2, y2 = face["box"]
    track = tracker.all[face["track"]]
    age = tracks.combine(track.ages, track.spreads)[0] if track.ages else face["age"]
    cv2.rectangle(bgr, (x1, y1), (x2, y2), (0, 200, 255), 2)
    cv2.putText(bgr, f"#{face['track']} {age:.0f}", (x1, max(12, y1 - 6)),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 200, 255), 2)
  return bgr


def iter_video(predictor: inference.Crops, source: str, *, every: int = 1,
               options: face_detect.DetectorOptions | None = None,
               annotate: str | None = None) -> Iterator[dict[str, Any]]:
  """One record per processed frame, in order, then ``{"tracks": [...]}`` (module doc)."""
  tracker = tracks.Tracker()
  pending: list[tuple[dict, list, np.ndarray]] = []
  writer = None

  def flush():
    nonlocal writer
    ages, spreads = predictor([c for _, crops, _ in pending for c in crops])
    i = 0
    for record, _, frame in pending:
      for face in record["faces"]:
        face["age"], face["spread"] = float(ages[i]), float(spreads[i])
        track = tracker.all[face["track"]]
        track.ages.append(face["age"])
        track.spreads.append(face["spread"])
        i += 1
      if annotate is not None:
        if writer is None:
          import cv2  # pylint: disable=import-outside-toplevel
          os.makedirs(os.path.dirname(os.path.abspath(annotate)), exist_ok=True)
          writer = cv2.VideoWriter(annotate, cv2.VideoWriter_fourcc(*"mp4v"), 25.0,
                                   (frame.shape[1], frame.shape[0]))
        writer.write(_draw(frame, record["faces"], tracker))
    done = [record for record, _, _ in pending]
    pending.clear()
    return done

  try:
    for index, seconds, frame in frames(source, every):
      found = face_detect.detect(frame, options)
      boxes = [[round(x1), round(y1), round(x2), round(y2)] for x1, y1, x2, y2, _ in found]
      linked = tracker.update(index, boxes)
      crops = [face_crop.crop_face(frame, (x1, y1, x2, y2), margin=predictor.margin,
                                   size=predictor.stored_size) for x1, y1, x2, y2, _ in found]
      record = {"frame": index, "time": round(seconds, 3), "faces": [
          {"box": box, "score": round(float(score), 4), "track": track.id}
          for box, (*_, score), track in zip(boxes, found, linked)]}
      pending.append((record, crops, frame))
      if sum(len(c) for _, c, _ in pending) >= predictor.batch_size or len(pending) >= 64:
        yield from flush()
    yield from flush()
  finally:
    if writer is not None:
      writer.release()
  yield {"tracks": [t.summary() for t in tracker.all]}


def format_lines(record: dict[str, Any]) -> list[str]:
  """Plain-text lines: one per face of a frame, or one per track at the end."""
  if "tracks" in record:
    return [f"track {t['track']}: frames {t['first_frame']}-{t['last_frame']} "
            f"({t['frames']} seen), age {t['age']:.1f} +- {t['spread']:.1f}"
            for t in record["tracks"]]
  return [f"frame {record['frame']} ({record['time']:.2f} s), track {f['track']}, "
          f"{' '.join(map(str, f['box']))}, {f['age']:.1f}, {f['spread']:.1f}"
          for f in record["faces"]]
