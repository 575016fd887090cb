"""appa_real builder on a small release written in APPA-REAL's own layout."""

import csv
import json
import os
import zipfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

import builder_testing

from data_builders import appa_real

# (split folder, file name, apparent age, std, real age, how the face crop is stored)
ROWS = [
    ("train", "000000.jpg", "23.456789", "4.1234567", "25", "rgb"),
    ("train", "000001.jpg", "61.2", "7.75", "58", "gray"),
    ("train", "000002.jpg", "40.0", "3.0", "41", "corrupt"),
    ("train", "000003.jpg", "12.5", "2.5", "12", "missing"),
    ("train", "000004.jpg", "33.333333", "5.0", "30", "rgb"),
    ("train", "000005.jpg", "30.1", "2.2", "n/a", "rgb"),
    ("valid", "000006.jpg", "5.4", "1.1", "4", "rgb"),
    ("valid", "000007.jpg", "75.98765", "9.87654", "80", "rgb"),
    ("valid", "000008.jpg", "44.0", "6.6", "47", "rgb"),
    ("test", "000009.jpg", "18.75", "3.25", "19", "rgb"),
    ("test", "000010.jpg", "90.5", "8.5", "93", "rgb"),
]
SPLITS = {"train": 3, "validation": 3, "test": 2}
REPORT = dict(total=11, kept=8, dropped=3, kept_per_split=dict(test=2, train=3, validation=3),
              dropped_per_reason=dict(bad_label=1, missing_image=1, undecodable_image=1))


def face_color(i: int) -> tuple[int, int, int]:
  return (40 + 17 * i, 200 - 13 * i, 90 + 11 * i)


def write_release(root: str) -> None:
  """APPA-REAL's layout: split folders of photos and face crops, gt_avg CSVs."""
  base = os.path.join(root, "appa-real-release")
  for folder in ("train", "valid", "test"):
    os.makedirs(os.path.join(base, folder))
    with open(os.path.join(base, f"gt_avg_{folder}.csv"), "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(
          ["file_name", "num_ratings", "apparent_age_avg", "apparent_age_std", "real_age"])
      for i, (split, name, apparent, std, real, _) in enumerate(ROWS):
        if split == folder:
          writer.writerow([name, 30 + i, apparent, std, real])
  for i, (folder, name, _, _, _, kind) in enumerate(ROWS):
    path = os.path.join(base, folder, name)
    # The full photo has another colour than the crop: a test can tell them apart.
    Image.new("RGB", (60, 80), (250, 250, 250)).save(path, quality=95)
    crop = path + "_face.jpg"
    if kind == "rgb":
      Image.new("RGB", (40, 48), face_color(i)).save(crop, quality=95)
    elif kind == "gray":
      Image.new("L", (40, 48), 77).save(crop, quality=95)
    elif kind == "corrupt":
      with open(crop, "wb") as f:
        f.write(b"not a jpeg at all")


class AppaRealTest(builder_testing.ReleaseTestCase):
  DATASET_CLASS = appa_real.Builder
  SPLITS = SPLITS

  write_release = staticmethod(write_release)


def build(manual_dir: str, data_dir: str, size: int = 32) -> tfds.core.DatasetBuilder:
  builder = appa_real.Builder(
      data_dir=data_dir, config=appa_real.AppaRealConfig(name=f"s{size}", image_size=size))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def examples(builder, split):
  return {ex["file_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


@pytest.fixture(scope="module")
def folder_build(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp("manual"))
  write_release(manual)
  return manual, build(manual, str(tmp_path_factory.mktemp("data")))


def test_labels_read_exactly_and_face_crops_used(folder_build):
  _, builder = folder_build
  got = {}
  for split in SPLITS:
    got.update(examples(builder, split))
  assert sorted(got) == [
      "test/000009.jpg_face.jpg", "test/000010.jpg_face.jpg",
      "train/000000.jpg_face.jpg", "train/000001.jpg_face.jpg", "train/000004.jpg_face.jpg",
      "valid/000006.jpg_face.jpg", "valid/000007.jpg_face.jpg", "valid/000008.jpg_face.jpg"]
  for i, (folder, name, apparent, std, real, kind) in enumerate(ROWS):
    ex = got.get(f"{folder}/{name}_face.jpg")
    if ex is None:
      continue
    assert ex["apparent_age"] == np.float32(apparent)
    assert ex["apparent_age_std"] == np.float32(std)
    assert ex["real_age"] == int(real) and ex["age"] == int(real)
    assert ex["image"].shape == (32, 32, 3)
    want = (77, 77, 77) if kind == "gray" else face_color(i)
    np.testing.assert_allclose(ex["image"].reshape(-1, 3).mean(0), want, atol=3)


def test_report_written_next_to_the_data(folder_build):
  _, builder = folder_build
  with open(os.path.join(builder.data_dir, "cleaning_report.json")) as f:
    assert json.load(f) == REPORT


def test_zip_gives_the_same_dataset(folder_build, tmp_path):
  manual, folder_builder = folder_build
  zipped = tmp_path / "manual"
  zipped.mkdir()
  with zipfile.ZipFile(zipped / "appa-real-release.zip", "w") as z:
    for dirpath, _, files in os.walk(manual):
      for name in files:
        path = os.path.join(dirpath, name)
        z.write(path, os.path.relpath(path, manual))
  builder = build(str(zipped), str(tmp_path / "data"))
  with open(os.path.join(builder.data_dir, "cleaning_report.json")) as f:
    assert json.load(f) == REPORT
  for split, n in SPLITS.items():
    a, b = examples(builder, split), examples(folder_builder, split)
    assert len(a) == n and sorted(a) == sorted(b)
    for key in a:
      np.testing.assert_array_equal(a[key]["image"], b[key]["image"])
