"""Video prediction: frames written with OpenCV, faces tracked, one age per track."""

import json

import numpy as np
import pytest

from agejax.serving import tracks

cv2 = pytest.importorskip("cv2")
FRAMES = 24


def test_weighted_median_and_combine_in_closed_form():
  assert tracks.weighted_median([3.0, 1.0, 2.0], [1, 1, 1]) == 2.0
  assert tracks.weighted_median([10.0, 20.0, 30.0], [1, 1, 5]) == 30.0
  # Weights 1/max(spread, 0.5)^2: spreads 0.1 and 0.5 weigh 4 each, spread 2 weighs 1/4;
  # half of 8.25 is first reached at 50 (cumulative 4, 8, 8.25); a mean would give 46.7.
  assert tracks.combine([40.0, 50.0, 90.0], [0.1, 0.5, 2.0]) == (50.0, 0.5)
  assert tracks.combine([40.0, 50.0, 90.0], [2.0, 2.0, 0.5]) == (90.0, 0.5)


def test_the_tracker_keeps_ids_through_motion_and_forgets_after_its_memory():
  tracker = tracks.Tracker(min_iou=0.3, max_missed=2)
  first = [t.id for t in tracker.update(0, [[0, 0, 10, 10], [50, 50, 60, 60]])]
  moved = [t.id for t in tracker.update(1, [[51, 50, 61, 60], [1, 0, 11, 10]])]
  assert first == [0, 1] and moved == [1, 0]
  for frame in (2, 3, 4):  # track 0 gone for 3 processed frames: it ends
    tracker.update(frame, [[52, 50, 62, 60]])
  assert [t.id for t in tracker.update(5, [[1, 0, 11, 10], [52, 50, 62, 60]])] == [2, 1]


def _write_video(path):
  """640x480 frames: the astronaut's face moving right and leaving, her mirror entering."""
  from skimage import data
  face = np.ascontiguousarray(data.astronaut()[20:240, 120:310])  # 220 x 190
  mirror = face[:, ::-1]
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (640, 480))
  boxes = []
  for k in range(FRAMES):
    frame = np.full((480, 640, 3), 90, np.uint8)
    placed = []
    x = 20 + 14 * k  # the first face moves right, out of the frame from about frame 24
    if k < 16:
      frame[130:350, x:x + 190] = face
      placed.append(0)
    if k >= 12:  # the second enters from the right
      x2 = 440 - 6 * (k - 12)
      frame[130:350, x2:x2 + 190] = mirror
      placed.append(1)
    boxes.append(placed)
    writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
  writer.release()
  return boxes


@pytest.fixture(scope="module")
def video_run(tiny_run, tmp_path_factory):
  from agejax import export
  root = tmp_path_factory.mktemp("video")
  path = root / "walk.mp4"
  present = _write_video(path)
  bundle = root / "bundle"
  assert export.main(["export", f"--workdir={tiny_run}", f"--output={bundle}"]) == 0
  return path, present, bundle, root


def test_predict_on_a_video_tracks_each_face_and_gives_one_age_per_track(video_run, capsys):
  from agejax import predict
  path, present, bundle, root = video_run
  annotated = root / "annotated"
  assert predict.main(["predict", f"--model={bundle}", str(path), "--json", "--every=2",
                       f"--annotate={annotated}"]) == 0
  records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  frames, summary = records[:-1], records[-1]
  assert [r["frame"] for r in frames] == list(range(0, FRAMES, 2))
  assert [r["time"] for r in frames] == [round(k / 10.0, 3) for k in range(0, FRAMES, 2)]
  # Each face found in its frames, one track id per face: two tracks in all.
  assert [len(r["faces"]) for r in frames] == [len(present[r["frame"]]) for r in frames]
  ids = {}
  for r in frames:
    for face in r["faces"]:
      who = 0 if face["box"][0] < 440 - 6 * (r["frame"] - 12) - 40 else 1
      ids.setdefault(who, set()).add(face["track"])
  assert {k: len(v) for k, v in ids.items()} == {0: 1, 1: 1}
  assert len(summary["tracks"]) == 2
  for track in summary["tracks"]:
    ages = [f["age"] for r in frames for f in r["faces"] if f["track"] == track["track"]]
    spreads = [f["spread"] for r in frames for f in r["faces"] if f["track"] == track["track"]]
    assert track["frames"] == len(ages)
    assert (track["age"], track["spread"]) == pytest.approx(tracks.combine(ages, spreads))
  # The annotated video reads back with one frame per processed frame.
  capture = cv2.VideoCapture(str(annotated / "walk.mp4"))
  assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(frames)
  capture.release()
