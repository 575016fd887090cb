"""utkface builder on a small UTKFace.tar.gz with the release's file names."""

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

import builder_testing

from data_builders import common
from data_builders import utkface

# File name -> (split by the name's hash, how the image is stored). Names with
# valid labels were picked for their split, which the first test confirms.
GOOD = {
    "25_0_0_20170109150557335.jpg.chip.jpg": ("train", "rgb"),
    "3_1_2_20170109150557336.jpg.chip.jpg": ("train", "gray"),
    "61_1_1_20170109150557337.jpg.chip.jpg": ("train", "rgb"),
    "45_0_3_20170109150557338.jpg.chip.jpg": ("train", "rgb"),
    "8_0_4_20170109150557339.jpg.chip.jpg": ("train", "rgb"),
    "90_1_0_20170109150557340.jpg.chip.jpg": ("train", "rgb"),
    "27_1_4_20170109150557384.jpg.chip.jpg": ("train", "rgb"),
    "33_1_3_20170109150557351.jpg.chip.jpg": ("validation", "rgb"),
    "70_0_2_20170109150557364.jpg.chip.jpg": ("validation", "rgb"),
    "1_1_0_20170109150557370.jpg.chip.jpg": ("test", "rgb"),
    "52_0_1_20170109150557383.jpg.chip.jpg": ("test", "rgb"),
}
MALFORMED = [
    "39_1_20170116174525125.jpg.chip.jpg",  # no race: as in the real release
    "abc_0_1_20170109150557335.jpg.chip.jpg",  # age not a number
    "30_2_0_20170109142408075.jpg.chip.jpg",  # gender code 2 does not exist
]
CORRUPT = "44_1_0_20170109150557390.jpg.chip.jpg"
SPLITS = {"train": 7, "validation": 2, "test": 2}
REPORT = dict(total=15, kept=11, dropped=4, kept_per_split=dict(test=2, train=7, validation=2),
              dropped_per_reason=dict(malformed_name=3, undecodable_image=1))


def color(name: str) -> tuple[int, int, int]:
  age = int(name.split("_")[0])
  return (2 * age + 20, 200 - age, 60 + age)


def jpeg(name: str) -> bytes:
  out = io.BytesIO()
  if name == CORRUPT:
    return b"\xff\xd8 truncated nonsense"
  if GOOD.get(name, ("", ""))[1] == "gray":
    Image.new("L", (50, 50), 123).save(out, format="JPEG", quality=95)
  else:
    Image.new("RGB", (50, 50), (100, 100, 100) if name in MALFORMED else color(name)).save(
        out, format="JPEG", quality=95)
  return out.getvalue()


def write_release(root: str, archive: bool = True) -> None:
  """UTKFace.tar.gz holding UTKFace/<name>, or the extracted UTKFace/ folder."""
  names = sorted([*GOOD, *MALFORMED, CORRUPT])
  if not archive:
    os.makedirs(os.path.join(root, "UTKFace"))
    for name in names:
      with open(os.path.join(root, "UTKFace", name), "wb") as f:
        f.write(jpeg(name))
    return
  with tarfile.open(os.path.join(root, "UTKFace.tar.gz"), "w:gz") as tar:
    folder = tarfile.TarInfo("UTKFace")
    folder.type = tarfile.DIRTYPE
    tar.addfile(folder)
    for name in names:
      data = jpeg(name)
      info = tarfile.TarInfo(f"UTKFace/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


class UtkFaceTest(builder_testing.ReleaseTestCase):
  DATASET_CLASS = utkface.Builder
  SPLITS = SPLITS

  write_release = staticmethod(write_release)


def build(manual_dir: str, data_dir: str) -> tfds.core.DatasetBuilder:
  builder = utkface.Builder(data_dir=data_dir,
                            config=utkface.UtkFaceConfig(name="s32", image_size=32))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def examples(builder, split):
  return {ex["file_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


@pytest.fixture(scope="module")
def tar_build(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp("manual"))
  write_release(manual)
  return build(manual, str(tmp_path_factory.mktemp("data")))


def test_names_split_as_listed():
  for name, (split, _) in GOOD.items():
    assert common.split_of(name) == split, name


def test_parse_name():
  assert utkface.utkface_dataset_builder.parse_name("25_0_0_20170109150557335.jpg.chip.jpg") == (
      25, "male", 0)
  assert utkface.utkface_dataset_builder.parse_name("3_1_2_2017.jpg.chip.jpg") == (3, "female", 2)
  for name in [*MALFORMED, "25_0_5_2017.jpg", "25_0_0_.jpg", "25_0_0_1_2.jpg", "-3_0_0_1.jpg"]:
    assert utkface.utkface_dataset_builder.parse_name(name) is None, name


def test_labels_and_gender_mapping(tar_build):
  gender = tar_build.info.features["gender"]
  race = tar_build.info.features["race"]
  assert gender.names == ["female", "male", "unknown"]
  assert race.names == ["white", "black", "asian", "indian", "others"]
  seen = 0
  for split in SPLITS:
    for path, ex in examples(tar_build, split).items():
      name = path.split("/")[1]
      assert path == f"UTKFace/{name}" and GOOD[name][0] == split
      age, g, r = (int(v) for v in name.split("_")[:3])
      assert ex["age"] == age and ex["race"] == r
      # UTKFace: 0 male, 1 female.
      assert gender.int2str(ex["gender"]) == ("male" if g == 0 else "female")
      want = (123, 123, 123) if GOOD[name][1] == "gray" else color(name)
      np.testing.assert_allclose(ex["image"].reshape(-1, 3).mean(0), want, atol=3)
      seen += 1
  assert seen == 11


def test_report(tar_build):
  with open(os.path.join(tar_build.data_dir, "cleaning_report.json")) as f:
    assert json.load(f) == REPORT


def test_extracted_folder_gives_the_same_splits(tar_build, tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  write_release(str(manual), archive=False)
  builder = build(str(manual), str(tmp_path / "data"))
  with open(os.path.join(builder.data_dir, "cleaning_report.json")) as f:
    assert json.load(f) == REPORT
  for split in SPLITS:
    assert sorted(examples(builder, split)) == sorted(examples(tar_build, split))
