r"""Ages of the faces in a video or a camera stream: ``agejax.predict VIDEO``.

Frames are read with OpenCV's ``VideoCapture`` (any file it decodes, a
camera index such as ``0``, or a stream URL) on a reader thread, a few frames
ahead, so decoding overlaps detection and the network. Every ``every``-th
frame is searched for faces (``agejax.serving.face_detect``; the frames
between are only demuxed, not converted), each face is cropped by the
training rule, and faces are linked into tracks
(:mod:`agejax.serving.tracks`). Faces of consecutive frames go through the
network together, up to the predictor's batch size, in the model's own
runtime (:func:`agejax.serving.inference.load`).

Each processed frame gives one record: ``frame`` (its index in the video),
``time`` (seconds), ``faces`` (``box``, ``score``, ``age``, ``spread``,
``track``, and ``interval``/``coverage`` for a calibrated model). The end
gives ``tracks``: per track its first and last frame, the frames it was seen
in, its age and spread (:func:`agejax.serving.tracks.combine`) and the
calibrated interval of that age and spread; ``frames_read``;
``frame_count`` (what the file's header promised, None for a camera or a
stream); ``interrupted`` (stopped with Ctrl-C, how a camera ends: the frames
so far are reported). ``annotate`` writes the processed frames as a video (boxes, track
id and the track's age so far). A video that ends before its header's
frame count (a truncated file, a dropped stream) still gives every frame
read and the summary; :func:`ended_early` says so.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from typing import Any, Iterator

import numpy as np

from agejax.data import face_crop
from agejax.serving import face_detect
from agejax.serving import inference
from agejax.serving import tracks

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
READ_AHEAD = 8  # decoded frames waiting for detection: enough to ride out a slow batch
_PENDING_FRAMES = 64  # frames held back waiting for a batch of faces to fill


class Unreadable(face_crop.UndecodableImage):
  """A video, camera or stream that does not open or gives no frame."""


def is_video(path: str) -> bool:
  """A video file by its extension, a camera index, or a stream URL."""
  return (path.lower().endswith(VIDEO_EXTENSIONS) or path.isdigit()
          or "://" in path)


@dataclasses.dataclass
class Video:
  """An open ``VideoCapture`` and what its header says.

  Attributes:
    source: the file, camera index or URL given.
    fps: frames per second (0 when the source does not say).
    frame_count: frames the file's header promises; None for cameras and
      streams, which have no end.
    frames_read: frames taken from the source so far.
    last_frame: the last frame converted to RGB pixels.
  """
  source: str
  capture: Any
  fps: float
  frame_count: int | None
  frames_read: int = 0
  last_frame: np.ndarray | None = None


def open_video(source: str) -> Video:
  """``source`` opened with OpenCV.

  Raises:
    Unreadable: it does not open (a missing or undecodable file, a camera
      that does not exist or is held by another program, a dead URL).
  """
  import cv2  # pylint: disable=import-outside-toplevel

  # OpenCV's own warnings ("can't open camera by index"): the error below says it once.
  cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
  camera = source.isdigit()
  if not camera and "://" not in source and not os.path.isfile(source):
    raise Unreadable(f"{source}: no such file")
  capture = cv2.VideoCapture(int(source) if camera else source)
  if not capture.isOpened():
    raise Unreadable(f"camera {source} does not open (no such device, or another program "
                     f"holds it)" if camera else
                     f"{source}: OpenCV cannot open it as a video (not a video, truncated "
                     f"before its index, or a stream that does not answer)")
  count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
  return Video(source, capture, float(capture.get(cv2.CAP_PROP_FPS) or 0.0),
               count if count > 0 and not camera and "://" not in source else None)


def frames(video: Video, every: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
  """``(index, seconds, RGB frame)`` of every ``every``-th frame, until the source ends."""
  try:
    while True:
      index = video.frames_read
      wanted = index % every == 0
      # grab() demuxes and decodes; only the frames used are converted to pixels.
      ok = video.capture.grab() and (not wanted or _retrieve(video))
      if not ok:
        return
      video.frames_read += 1
      if wanted:
        seconds = index / video.fps if video.fps > 0 else 0.0
        yield index, seconds, video.last_frame
  finally:
    video.capture.release()


def _retrieve(video: Video) -> bool:
  ok, bgr = video.capture.retrieve()
  if ok:
    video.last_frame = np.ascontiguousarray(bgr[:, :, ::-1])
  return ok


def read_ahead(items: Iterator[Any], depth: int = READ_AHEAD) -> Iterator[Any]:
  """``items``, produced on a thread up to ``depth`` ahead of the consumer.

  An exception on the thread is raised here, in order; leaving the loop
  early stops the thread.
  """
  ready: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()
  end = object()

  def put(item: Any) -> bool:
    while not stop.is_set():
      try:
        ready.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce() -> None:
    try:
      for item in items:
        if not put(item):
          return
      put((end, None))
    except BaseException as e:  # pylint: disable=broad-except  # handed to the consumer
      put((end, e))

  thread = threading.Thread(target=produce, name="agejax-read-ahead", daemon=True)
  thread.start()
  try:
    while True:
      item = ready.get()
      if isinstance(item, tuple) and len(item) == 2 and item[0] is end:
        if item[1] is not None:
          raise item[1]
        return
      yield item
  finally:
    stop.set()
    thread.join()


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


def iter_video(predictor: inference.Crops, source: str | Video, *, every: int = 1,
               options: face_detect.DetectorOptions | None = None,
               annotate: str | None = None) -> Iterator[dict[str, Any]]:
  """One record per processed frame, in order, then the summary (module doc).

  Raises:
    Unreadable: ``source`` does not open.
  """
  video = source if isinstance(source, Video) else open_video(source)
  options = options or face_detect.DetectorOptions(detector=face_detect.DEFAULT_VIDEO_DETECTOR)
  tracker = tracks.Tracker()
  pending: list[tuple[dict, list, np.ndarray]] = []
  writer = None

  def flush():
    nonlocal writer
    ages, spreads = predictor([c for _, crops, _ in pending for c in crops])
    predictor.write_ages([face for record, _, _ in pending for face in record["faces"]],
                         ages, spreads)
    for record, _, frame in pending:
      for face in record["faces"]:
        track = tracker.all[face["track"]]
        track.ages.append(face["age"])
        track.spreads.append(face["spread"])
      if annotate is not None:
        if writer is None:
          import cv2  # pylint: disable=import-outside-toplevel
          os.makedirs(os.path.dirname(os.path.abspath(annotate)), exist_ok=True)
          fps = video.fps / every if video.fps > 0 else 25.0
          writer = cv2.VideoWriter(annotate, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                   (frame.shape[1], frame.shape[0]))
        writer.write(_draw(frame, record["faces"], tracker))
    done = [record for record, _, _ in pending]
    pending.clear()
    return done

  reader = read_ahead(frames(video, every))
  interrupted = False
  try:
    try:
      for index, seconds, frame in reader:
        found = face_detect.detect(frame, options)
        boxes = [[round(x1), round(y1), round(x2), round(y2)] for x1, y1, x2, y2, _ in found]
        linked = tracker.update(index, boxes)
        crops = [face_crop.crop_face(frame, (x1, y1, x2, y2), margin=predictor.margin,
                                     size=predictor.stored_size) for x1, y1, x2, y2, _ in found]
        record = {"frame": index, "time": round(seconds, 3), "faces": [
            {"box": box, "score": round(float(score), 4), "track": track.id}
            for box, (*_, score), track in zip(boxes, found, linked)]}
        pending.append((record, crops, frame))
        if (sum(len(c) for _, c, _ in pending) >= predictor.batch_size or
            len(pending) >= _PENDING_FRAMES):
          yield from flush()
    except KeyboardInterrupt:  # how a camera is stopped: the frames so far are reported
      interrupted = True
    reader.close()  # stops the reader thread before its capture is released
    yield from flush()
  finally:
    reader.close()
    video.capture.release()
    if writer is not None:  # what was written stays a playable video, whatever happened
      writer.release()
  summaries = [track.summary() for track in tracker.all]
  aged = [summary for summary in summaries if summary["frames"]]
  predictor.write_ages(aged, np.array([t["age"] for t in aged]),
                       np.array([t["spread"] for t in aged]))
  yield {"tracks": summaries, "frames_read": video.frames_read,
         "frame_count": video.frame_count, "interrupted": interrupted}


def ended_early(summary: dict[str, Any]) -> bool:
  """The video gave fewer frames than its header promised (truncated, or the stream dropped)."""
  return (not summary["interrupted"] and summary["frame_count"] is not None
          and summary["frames_read"] < summary["frame_count"])


def format_lines(record: dict[str, Any]) -> list[str]:
  """Plain-text lines: one per face of a frame, or one per track at the end."""
  if "tracks" in record:
    return [f"track {t['track']}: frames {t['first_frame']}-{t['last_frame']} "
            f"({t['frames']} seen), age {t['age']:.1f} +- {t['spread']:.1f}"
            + (f", {t['interval'][0]:.1f}-{t['interval'][1]:.1f} ({100 * t['coverage']:g}%)"
               if "interval" in t else "")
            for t in record["tracks"]]
  return [f"frame {record['frame']} ({record['time']:.2f} s), track {f['track']}, "
          f"{' '.join(map(str, f['box']))}, {f['age']:.1f}, {f['spread']:.1f}"
          for f in record["faces"]]
