"""Face detection and prediction on photos: a real portrait, faceless photos, bad files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image
from skimage import data as skdata

from agejax import predict
from agejax.serving import bundle
from agejax.data import face_crop
from agejax.serving import face_detect
from agejax.serving import inference
from agejax import models
from agejax.serving import photos
from configs import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The astronaut's face (Eileen Collins, scikit-image's bundled 512 x 512
# portrait), read off a 10 px grid drawn over the photo: cheek to cheek,
# hairline to chin.
FACE = (178, 72, 272, 182)


def iou(a, b):
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
  return w * h / (area(a) + area(b) - w * h)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
  """An untrained tiny network as a bundle: 32 px crops, flip averaging."""
  cfg = tiny.get_config()
  cfg.data.eval_flip_tta = True
  _, params, batch_stats = models.split_state(
      models.build_model(cfg.model, cfg.data.image_size, nnx.Rngs(0)))
  out = str(tmp_path_factory.mktemp("bundle"))
  crop = {"margin": 0.4, "stored_size": 32, "source": "test"}
  return bundle.write(out, bundle.metadata(cfg, 0, crop=crop), params, batch_stats)


@pytest.fixture(scope="module")
def predictor(bundle_dir):
  # Batches of 2: three faces in a folder span two batches and several files.
  return inference.load(bundle_dir, batch_size=2)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
  """astronaut.jpg, broken.jpg, coffee.png, group/a.png, group/b.png, plain/flat.png."""
  root = tmp_path_factory.mktemp("photos")
  (root / "group").mkdir()
  (root / "plain").mkdir()
  astronaut = skdata.astronaut()
  Image.fromarray(astronaut).save(root / "astronaut.jpg", quality=95)
  Image.fromarray(astronaut).save(root / "group" / "a.png")
  Image.fromarray(astronaut[:, ::-1]).save(root / "group" / "b.png")
  Image.fromarray(skdata.coffee()).save(root / "coffee.png")
  Image.fromarray(np.full((200, 300, 3), 180, np.uint8)).save(root / "plain" / "flat.png")
  # A download cut short: a real JPEG's first 2 KB.
  (root / "broken.jpg").write_bytes((root / "astronaut.jpg").read_bytes()[:2048])
  (root / "notes.txt").write_text("not an image extension: skipped in folders")
  return str(root)


@pytest.mark.parametrize("detector, min_score", [("mtcnn", 0.99), ("blazeface_full", 0.9),
                                                ("blazeface_tiled", 0.9), ("blazeface", 0.9)])
def test_detector_finds_the_astronaut_face(detector, min_score):
  boxes = face_detect.detect(skdata.astronaut(), face_detect.DetectorOptions(detector=detector))
  assert len(boxes) == 1
  x1, y1, x2, y2, score = boxes[0]
  assert iou((x1, y1, x2, y2), FACE) > 0.6
  assert score > min_score
  assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512


@pytest.mark.parametrize("detector", ["mtcnn", "blazeface_full", "blazeface_tiled"])
def test_detector_maps_boxes_back_from_a_scaled_down_photo(detector):
  options = face_detect.DetectorOptions(detector=detector)
  photo = np.asarray(Image.fromarray(skdata.astronaut()).resize((2048, 2048), Image.BICUBIC))
  # Searched at 1024 px (MTCNN) or 192 px (BlazeFace), reported in the photo's pixels.
  (x1, y1, x2, y2, _), = face_detect.detect(photo, options)
  assert iou((x1 / 4, y1 / 4, x2 / 4, y2 / 4), FACE) > 0.5
  small = face_detect.detect(skdata.astronaut(), options)[0]
  assert iou((x1 / 4, y1 / 4, x2 / 4, y2 / 4), small[:4]) > 0.8


@pytest.mark.parametrize("detector", ["mtcnn", "blazeface_full", "blazeface_tiled", "blazeface"])
def test_photos_without_faces_have_no_boxes(detector):
  options = face_detect.DetectorOptions(detector=detector)
  assert face_detect.detect(skdata.coffee(), options) == []
  assert face_detect.detect(np.full((200, 300, 3), 180, np.uint8), options) == []
  assert face_detect.detect(np.zeros((8, 8, 3), np.uint8), options) == []  # below MTCNN's window


def test_predict_paths_reports_every_file(predictor, photo_dir):
  records = photos.predict_paths(predictor, [photo_dir])
  names = [os.path.relpath(r["file"], photo_dir) for r in records]
  assert names == ["astronaut.jpg", "broken.jpg", "coffee.png", "group/a.png", "group/b.png",
                   "plain/flat.png"]
  by_name = dict(zip(names, records))
  assert by_name["broken.jpg"]["error"].startswith("unreadable: image file is truncated")
  assert by_name["coffee.png"]["faces"] == [] and by_name["coffee.png"]["error"] is None
  assert by_name["plain/flat.png"]["faces"] == []
  for name in ("astronaut.jpg", "group/a.png"):
    face, = by_name[name]["faces"]
    assert iou(face["box"], FACE) > 0.5 and face["score"] > 0.9
    assert (by_name[name]["width"], by_name[name]["height"]) == (512, 512)
  mirrored, = by_name["group/b.png"]["faces"]
  assert iou(mirrored["box"], (512 - FACE[2], FACE[1], 512 - FACE[0], FACE[3])) > 0.5

  # The age is the network's on the training-rule crop of the detected box.
  photo = photos.read_photo(os.path.join(photo_dir, "group", "a.png"))
  box = face_detect.detect(photo)[0][:4]
  crop = face_crop.crop_face(photo, box, margin=0.4, size=32)
  ages, spreads = predictor([crop])
  face = by_name["group/a.png"]["faces"][0]
  assert face["age"] == pytest.approx(float(ages[0]), abs=1e-5)
  assert face["spread"] == pytest.approx(float(spreads[0]), abs=1e-5)
  assert 0 <= face["age"] <= 100 and face["spread"] > 0
  # Flip averaging (the bundle's flip_tta): a crop and its mirror, one age.
  np.testing.assert_allclose(predictor([crop[:, ::-1]])[0], ages, atol=1e-4)


def test_no_detect_takes_the_whole_image_as_the_face(predictor, photo_dir):
  path = os.path.join(photo_dir, "coffee.png")
  record, = photos.predict_paths(predictor, [path], detect=False)
  face, = record["faces"]
  assert face["box"] == [0, 0, 600, 400] and face["score"] is None
  expected = predictor([face_crop.crop_face(skdata.coffee(), None, size=32)])[0][0]
  assert face["age"] == pytest.approx(float(expected), abs=1e-5)


def test_cli_prints_one_line_per_face(bundle_dir, photo_dir, capsys):
  files = [os.path.join(photo_dir, n) for n in ("astronaut.jpg", "coffee.png", "broken.jpg")]
  assert predict.main(["predict", "--model", bundle_dir, "--batch_size", "2", *files]) == 0
  lines = capsys.readouterr().out.strip().split("\n")
  assert len(lines) == 4
  assert lines[3] == "3 file(s): 1 face(s), 1 unreadable"  # the summary
  file, box, age, spread = lines[0].split(", ")
  assert file == files[0]
  assert iou([int(v) for v in box.split()], FACE) > 0.5
  assert 0 <= float(age) <= 100 and float(spread) > 0
  assert lines[1] == f"{files[1]}, no face found"
  assert lines[2].startswith(f"{files[2]}, unreadable: ")


def test_cli_json_parses(bundle_dir, photo_dir, capsys):
  assert predict.main(["predict", "--model", bundle_dir, "--batch_size", "2", "--json", photo_dir]) == 0
  records = [json.loads(line) for line in capsys.readouterr().out.strip().split("\n")]
  assert len(records) == 6
  assert [len(r["faces"]) for r in records] == [1, 0, 0, 1, 1, 0]
  assert {"box", "score", "age", "spread"} == set(records[0]["faces"][0])
  assert records[1]["error"].startswith("unreadable")


def test_cli_annotate_writes_pngs_with_boxes(bundle_dir, photo_dir, tmp_path, capsys):
  out = tmp_path / "annotated"
  files = [os.path.join(photo_dir, "astronaut.jpg"), os.path.join(photo_dir, "group")]
  assert predict.main(["predict", "--model", bundle_dir, "--batch_size", "2", "--json", "--annotate", str(out),
                       *files]) == 0
  records = [json.loads(line) for line in capsys.readouterr().out.strip().split("\n")]
  assert [os.path.relpath(r["annotated"], out) for r in records] == [
      "astronaut.png", "a.png", "b.png"]
  drawn = np.asarray(Image.open(out / "a.png"))
  original = skdata.astronaut()
  assert drawn.shape == original.shape
  x1, y1, x2, y2 = records[1]["faces"][0]["box"]
  np.testing.assert_array_equal(drawn[(y1 + y2) // 2, x1], [255, 40, 40])  # the box's left edge
  np.testing.assert_array_equal(drawn[400:, :100], original[400:, :100])  # far from it: untouched
  assert (drawn != original).any(axis=-1).mean() < 0.05


def test_exit_code_is_1_when_nothing_could_be_read(bundle_dir, photo_dir, capsys):
  args = ["--model", bundle_dir, "--batch_size", "2", os.path.join(photo_dir, "broken.jpg"),
          os.path.join(photo_dir, "missing.jpg")]
  assert predict.main(["predict", *args]) == 1
  captured = capsys.readouterr()
  assert "missing.jpg, unreadable: " in captured.out
  assert "no image could be read" in captured.err
  assert predict.main(["predict", "--model", os.path.join(photo_dir, "plain"), photo_dir]) == 2


def test_photos_are_turned_upright_by_their_exif_orientation(predictor, tmp_path):
  """A phone photo stored sideways with EXIF orientation 6 (display: turn 90° clockwise)."""
  path = str(tmp_path / "phone.jpg")
  sideways = Image.fromarray(skdata.astronaut()[:, :400]).rotate(90, expand=True)
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation
  sideways.save(path, quality=95, exif=exif)
  record, = photos.predict_paths(predictor, [path])
  assert (record["width"], record["height"]) == (400, 512)
  face, = record["faces"]
  assert iou(face["box"], FACE) > 0.5


def test_a_bundle_needs_neither_the_training_code_nor_tfds(bundle_dir, photo_dir):
  script = (
      "import sys\n"
      "from agejax import predict\n"
      f"assert predict.main(['predict', '--model', {bundle_dir!r}, '--no_detect', "
      f"{os.path.join(photo_dir, 'coffee.png')!r}]) == 0\n"
      "loaded = [m for m in ('tensorflow_datasets', 'agejax.train.loop', 'agejax.workdir.restore',\n"
      "                      'agejax.data.input_pipeline') if m in sys.modules]\n"
      "assert not loaded, loaded\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-2000:]
  line, summary = result.stdout.strip().splitlines()
  assert summary == "1 file(s): 1 face(s), 0 unreadable"
  file, box, age, spread = line.split(", ")
  assert file.endswith("coffee.png") and box == "0 0 600 400"
  assert 0 <= float(age) <= 100
