"""facebase builder on a generated benchmark release; the five protocol splits."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import builder_testing
import facebase_fixture

from agejax.data import folders
from agejax.errors import ConfigError
from data_builders import common
from data_builders import facebase

# 20 people x 2 images, person p in folder p % 10: 4 images per folder; plus
# four entries the builder drops, each for its own reason.
ENTRIES = facebase_fixture.entries_for("AgeDB", persons=20, images_per_person=2)
DROPPED = [
    {**ENTRIES[0], "age": -1},  # the benchmark's "unknown age"
    {**ENTRIES[1], "img_path": "AgeDB/AgeDB/not_there.jpg"},
    {k: v for k, v in ENTRIES[2].items() if k != "aligned_bbox"},
    {**ENTRIES[3], "aligned_bbox": [1, 1, 1, 1, 1, 1, 1, 1]},  # no area
]
SPLITS = {f"folder{k}": 4 for k in range(10)}
# The dropped entries copy entries of folders 0 and 1: their counts stay 4.
REPORT = dict(total=44, kept=40, dropped=4, kept_per_split=dict(sorted(SPLITS.items())),
              dropped_per_reason=dict(bad_aligned_bbox=1, missing_image=1, no_aligned_bbox=1,
                                      unknown_age=1))


def write_release(root):
  facebase_fixture.write_release(root, "AgeDB", ENTRIES)
  with open(os.path.join(root, "AgeDB_aligned.json"), "w") as f:
    json.dump(ENTRIES + DROPPED, f, indent=4)


class FacebaseTest(builder_testing.ReleaseTestCase):
  DATASET_CLASS = facebase.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ["agedb"]
  SPLITS = SPLITS
  SKIP_CHECKSUMS = True

  write_release = staticmethod(write_release)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp("manual"))
  write_release(manual)
  builder = facebase.Builder(data_dir=str(tmp_path_factory.mktemp("data")),
                             config=facebase.FacebaseConfig(
                                 name="agedb32", database_file="AgeDB_aligned.json",
                                 image_size=32))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return manual, builder


def test_every_kept_entry_is_stored_once_in_its_folder(built):
  _, builder = built
  with open(os.path.join(builder.data_dir, "cleaning_report.json")) as f:
    assert json.load(f) == REPORT
  by_folder = collections.defaultdict(list)
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      assert split == f"folder{ex['folder']}"
      by_folder[int(ex["folder"])].append(ex["source_path"].decode())
  want = collections.defaultdict(list)
  for e in ENTRIES:
    want[e["folder"]].append(e["img_path"])
  assert {k: sorted(v) for k, v in by_folder.items()} == {k: sorted(v) for k, v in want.items()}


def test_tfds_build_on_the_command_line(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  write_release(str(manual))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  tfds_cli = os.path.join(os.path.dirname(sys.executable), "tfds")
  done = subprocess.run([tfds_cli, "build", "data_builders/facebase", "--config=agedb",
                         f"--manual_dir={manual}", f"--data_dir={data}"], cwd=repo,
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, "PYTHONPATH": repo, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert done.returncode == 0, done.stderr[-3000:]
  version = data / "facebase" / "agedb" / "1.0.0"
  assert json.load(open(version / "cleaning_report.json")) == REPORT
  info = json.load(open(version / "dataset_info.json"))
  counts = {s["name"]: sum(int(n) for n in s["shardLengths"]) for s in info["splits"]}
  assert counts == SPLITS  # the JSON's kept entries, folder by folder
  assert "kept in folder9: 4" in done.stdout


def test_labels_follow_the_json(built):
  _, builder = built
  entries = {e["img_path"]: e for e in ENTRIES}
  gender = builder.info.features["gender"]
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      e = entries[ex["source_path"].decode()]
      assert ex["age"] == e["age"] and ex["identity"].decode() == str(e["id_num"])
      assert ex["database"].decode() == "AgeDB"
      assert gender.int2str(ex["gender"]) == {"M": "male", "F": "female"}[e["gender"]]


LUMA = np.array([0.299, 0.587, 0.114])


def test_crops_match_an_independent_warp_of_the_rotated_box(built):
  manual, builder = built
  entries = {e["img_path"]: e for e in ENTRIES}
  off_photo = 0
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      e = entries[ex["source_path"].decode()]
      pixels = np.asarray(Image.open(os.path.join(manual, e["img_path"])).convert("RGB"))
      want, inside, outside = facebase_fixture.reference_warp(pixels, e["aligned_bbox"], 32)
      got = ex["image"].astype(np.float64)
      # Luma: the stored JPEG halves the chroma resolution (4:2:0), not the
      # luma's; TF's fast integer IDCT adds about a level. Measured: mean
      # <= 1.6, max <= 10 levels; a box turned by 90 degrees or mirrored is
      # off by tens (the next test).
      diff = np.abs(got @ LUMA - want @ LUMA)[inside]
      assert diff.mean() < 2.5 and diff.max() < 16, (e["img_path"], diff.mean(), diff.max())
      if outside.any():  # off the photo is black
        off_photo += 1
        assert got[outside].mean() < 4
  assert off_photo >= 5  # the fixture's edge faces


def test_warp_box_is_the_reference_warp_before_jpeg():
  from agejax.data import face_crop
  pixels = facebase_fixture.photo(3)
  corners = facebase_fixture.box_corners((44.0, 36.0), 40.0, 25.0)
  got = np.asarray(face_crop.warp_box(Image.fromarray(pixels), corners, 32), np.float64)
  want, inside, _ = facebase_fixture.reference_warp(pixels, corners, 32)
  assert inside.all()
  assert np.abs(got - want).max() < 1.0  # PIL rounds to uint8: under one level
  # The corner order matters: the same box entered from another corner is a
  # rotated (or mirrored) crop, tens of levels away.
  tl, tr, br, bl = np.asarray(corners).reshape(4, 2)
  for other in ((tr, br, bl, tl), (tr, tl, bl, br)):
    turned = np.asarray(face_crop.warp_box(Image.fromarray(pixels),
                                           np.concatenate(other), 32), np.float64)
    assert np.abs(turned - want).mean() > 10


def test_warp_box_refuses_bad_boxes():
  from agejax.data import face_crop
  image = Image.new("RGB", (8, 8))
  with pytest.raises(ValueError, match="8 finite numbers"):
    face_crop.warp_box(image, [0, 0, 1, 1])
  with pytest.raises(ValueError, match="no area"):
    face_crop.warp_box(image, [0, 0, 4, 0, 8, 0, 4, 0], 4)


def test_the_five_splits_are_the_benchmarks():
  want = [
      ((0, 1, 2, 3, 4, 5), (6, 7), (8, 9)),
      ((2, 3, 4, 5, 6, 7), (8, 9), (0, 1)),
      ((4, 5, 6, 7, 8, 9), (0, 1), (2, 3)),
      ((5, 6, 7, 8, 9, 0), (1, 2), (3, 4)),
      ((6, 7, 8, 9, 0, 1), (2, 3), (4, 5)),
  ]
  for k, (train, val, test) in enumerate(want):
    sets = folders.folder_sets(k, range(10))
    assert sets == {"train": train, "validation": val, "test": test}
    # Every folder in exactly one part.
    assert sorted(train + val + test) == list(range(10))
  assert folders.split_strings(3, range(10)) == {
      "train": "folder5+folder6+folder7+folder8+folder9+folder0",
      "validation": "folder1+folder2", "test": "folder3+folder4"}
  # CLAP2016 / CACD2000: their own train/val/test for every split.
  for k in range(5):
    assert folders.split_strings(k, [0, 1, 2]) == {
        "train": "folder0", "validation": "folder1", "test": "folder2"}
  with pytest.raises(ConfigError, match="data.protocol_split"):
    folders.folder_sets(5, range(10))
  with pytest.raises(ConfigError, match="lacks for test"):
    folders.split_strings(0, range(8))


def test_no_identity_is_in_two_parts_of_any_split(built):
  _, builder = built
  for k in range(5):
    splits = folders.split_strings(k, folders.available_folders(builder.info.splits.keys()))
    people = {part: {ex["identity"].decode()
                     for ex in tfds.as_numpy(builder.as_dataset(split=split))}
              for part, split in splits.items()}
    assert sum(len(p) for p in people.values()) == 20  # all 20 people, each once
    assert not (people["train"] & people["validation"] or people["train"] & people["test"]
                or people["validation"] & people["test"])


def test_identity_folders_are_stable_and_cover_ten_folders():
  names = tuple(f"folder{k}" for k in range(10))
  assert common.split_of("brad pitt", (0.1,) * 10, names) == common.split_of(
      "brad pitt", (0.1,) * 10, names)
  counts = collections.Counter(common.split_of(f"person {i}", (0.1,) * 10, names)
                               for i in range(2000))
  assert sorted(counts) == sorted(names) and min(counts.values()) > 150


def test_an_unbuilt_database_names_the_build_command(tmp_path):
  from agejax.data import catalog
  from configs import protocol_resnet50
  cfg = protocol_resnet50.get_config()
  cfg.data.data_dir = str(tmp_path)
  with pytest.raises(ConfigError, match=r"build it with `tfds build data_builders/facebase "
                     r"--config=agedb --manual_dir=<release files> --data_dir="):
    catalog.ensure_prepared(cfg.data)
