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
  tracker = tracks.Tracker(max_missed=2)
  first = [t.id for t in tracker.update(0, [[0, 0, 10, 10], [50, 50, 60, 60]])]
  moved = [t.id for t in tracker.update(1, [[51, 50, 61, 60], [1, 0, 11, 10]])]
  assert first == [0, 1] and moved == [1, 0]
  for frame in (2, 3, 4):  # track 0 gone for 3 processed frames: it ends
    tracker.update(frame, [[52, 50, 62, 60]])
  assert [t.id for t in tracker.update(5, [[1, 0, 11, 10], [52, 50, 62, 60]])] == [2, 1]


def test_the_tracker_follows_a_face_further_than_overlap_reaches():
  """A 70 px face moving 45 px between processed frames (IoU 0.22) keeps one track."""
  tracker = tracks.Tracker()
  boxes = [[10 + 45 * k, 100, 80 + 45 * k, 170] for k in range(8)]
  assert tracks.iou(boxes[0], boxes[1]) < 0.3
  ids = [tracker.update(15 * k, [box])[0].id for k, box in enumerate(boxes)]
  assert ids == [0] * 8
  # Velocity: 45 px per 15 frames; where the face should be 30 frames later.
  assert tracker.all[0].velocity == (3.0, 0.0)
  assert tracker.all[0].predicted_centre(135) == (45 * 7 + 45 + 90.0, 135.0)
  # Distances in face sides: one side away, exactly at the limit, still matches.
  track = tracker.all[0]
  assert tracker.distance(track, 105, [395, 100, 465, 170]) == pytest.approx(1.0)
  # Twice as large, grown down and right: its centre is (35, 35) px from the last one.
  assert tracker.distance(track, 105, [325, 100, 465, 240]) == pytest.approx(
      np.hypot(35, 35) / 70)
  assert tracker.distance(track, 105, [325, 100, 475, 250]) == float("inf")  # over twice the side
  # A face the size of another, two sides away, is someone else.
  assert tracker.update(120, [[10, 300, 80, 370]])[0].id == 1


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


def test_videos_and_photos_get_their_own_default_detector(video_run, tmp_path, monkeypatch,
                                                         capsys):
  from PIL import Image
  from skimage import data as skdata

  from agejax import predict
  from agejax.serving import face_detect
  path, _, bundle, _ = video_run
  used = []
  original = face_detect.detect
  monkeypatch.setattr(face_detect, "detect",
                      lambda image, options=None: used.append(options.detector)
                      or original(image, options))
  photo = tmp_path / "astronaut.jpg"
  Image.fromarray(skdata.astronaut()).save(photo)
  assert predict.main(["predict", f"--model={bundle}", str(path), "--every=10"]) == 0
  assert predict.main(["predict", f"--model={bundle}", str(photo)]) == 0
  assert predict.main(["predict", f"--model={bundle}", str(photo), "--detector=mtcnn"]) == 0
  capsys.readouterr()
  frames = len(range(0, FRAMES, 10))
  assert used == ([face_detect.DEFAULT_VIDEO_DETECTOR] * frames
                  + [face_detect.DEFAULT_DETECTOR, "mtcnn"])


def test_each_track_gets_the_calibrated_interval_of_its_age(video_run, tmp_path, capsys):
  import shutil
  from agejax import predict
  path, _, bundle, _ = video_run
  calibrated = tmp_path / "calibrated"
  shutil.copytree(bundle, calibrated)
  meta = json.loads((calibrated / "model.json").read_text())
  meta["interval"] = {"method": "normalized", "coverage": 0.9, "quantile": 2.0,
                      "min_spread": 0.5, "examples": 64}
  (calibrated / "model.json").write_text(json.dumps(meta))
  assert predict.main(["predict", f"--model={calibrated}", str(path), "--json",
                       "--every=3"]) == 0
  records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  low, high = meta["min_age"], meta["max_age"]
  for item in [f for r in records[:-1] for f in r["faces"]] + records[-1]["tracks"]:
    half = 2.0 * max(item["spread"], 0.5)
    assert item["interval"] == pytest.approx([max(item["age"] - half, low),
                                              min(item["age"] + half, high)], abs=1e-9)
    assert item["coverage"] == 0.9


def _run_predict(argv, capfd):
  from agejax import predict
  capfd.readouterr()
  code = predict.main(["predict", *argv])
  out, err = capfd.readouterr()
  return code, out, err


def test_bad_video_sources_fail_in_one_line(video_run, tmp_path, capfd):
  _, _, bundle, _ = video_run
  junk = tmp_path / "junk.mp4"
  junk.write_text("not a video")
  for source, line in (
      (str(junk), f"agejax.predict: {junk}: OpenCV cannot open it as a video (not a video, "
                  "truncated before its index, or a stream that does not answer)"),
      (str(tmp_path / "missing.mp4"), f"agejax.predict: {tmp_path / 'missing.mp4'}: no such file"),
      ("9", "agejax.predict: camera 9 does not open (no such device, or another program "
            "holds it)")):
    code, out, err = _run_predict([f"--model={bundle}", source], capfd)
    assert (code, out, err.strip()) == (1, "", line)


def test_a_command_of_its_own_prints_one_line_for_a_file_that_is_no_video(video_run, tmp_path):
  """FFmpeg's own "moov atom not found" stays off stderr in a fresh process too."""
  import os
  import subprocess
  import sys
  _, _, bundle, _ = video_run
  junk = tmp_path / "junk.mp4"
  junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))  # an MP4 header, no more
  env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
  done = subprocess.run([sys.executable, "-m", "agejax.predict", f"--model={bundle}", str(junk)],
                        capture_output=True, text=True, env=env, timeout=300, check=False)
  assert (done.returncode, done.stdout, done.stderr) == (
      1, "", f"agejax.predict: {junk}: OpenCV cannot open it as a video (not a video, "
             "truncated before its index, or a stream that does not answer)\n")


def test_a_video_that_ends_early_keeps_what_was_read(video_run, tmp_path, capfd):
  """An AVI cut in half: its header promises every frame, OpenCV decodes the first half."""
  from skimage import data
  _, _, bundle, _ = video_run
  whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
  writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 480))
  face = data.astronaut()[20:240, 120:310]
  for k in range(FRAMES):
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[130:350, 100 + 8 * k:290 + 8 * k] = face
    writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
  writer.release()
  data_bytes = whole.read_bytes()
  cut.write_bytes(data_bytes[:len(data_bytes) // 2])
  annotated = tmp_path / "annotated"
  code, out, err = _run_predict([f"--model={bundle}", str(cut), "--json",
                                 f"--annotate={annotated}"], capfd)
  records = [json.loads(line) for line in out.strip().splitlines()]
  frames, summary = records[:-1], records[-1]
  read = summary["frames_read"]
  assert 0 < read < FRAMES and summary["frame_count"] == FRAMES
  assert [r["frame"] for r in frames] == list(range(read))
  assert [t["frames"] for t in summary["tracks"]] == [read]  # one face, one track
  assert code == 1 and err.strip() == (
      f"agejax.predict: {cut}: ended at frame {read} of the {FRAMES} its header promises "
      f"(truncated, or the stream dropped); the frames read are reported above and in "
      f"{annotated / 'cut.mp4'}")
  capture = cv2.VideoCapture(str(annotated / "cut.mp4"))
  assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == read
  capture.release()


def test_read_ahead_keeps_order_raises_in_order_and_stops_its_thread():
  import threading
  from agejax.serving import video

  def numbers():
    yield from range(5)
    raise OSError("disk gone")

  seen = []
  with pytest.raises(OSError, match="disk gone"):
    for n in video.read_ahead(numbers(), depth=2):
      seen.append(n)
  assert seen == [0, 1, 2, 3, 4]
  endless = video.read_ahead(iter(int, 1), depth=2)  # never ends on its own
  assert [next(endless) for _ in range(3)] == [0, 0, 0]
  endless.close()
  assert not any(t.name == "agejax-read-ahead" for t in threading.enumerate())
