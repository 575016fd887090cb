"""age_csv builder on three CSVs: with identities, with paths only, with face boxes."""

import csv
import json
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

import builder_testing

from agejax.data import face_crop
from agejax.data import folders
from agejax.evaluation import attributes
from data_builders import age_csv
from data_builders import common

# labels.csv (the default config): person-disjoint splits. Alice Smith and
# Bob Jones hash to train, Grace Hopper to validation, Lena Berg to test.
LABELS = [
    ("img/alice_1.jpg", "30", "Alice Smith", "F"),
    ("img/alice_2.jpg", "31", "  alice   SMITH ", "female"),  # same person, other spelling
    ("img/bob_1.jpg", "45", "Bob Jones", "M"),  # grayscale
    ("img/bob_2.jpg", "46.0", "Bob Jones", "m"),
    ("img/grace_1.jpg", "80", "Grace Hopper", "F"),
    ("img/grace_2.jpg", "81", "Grace Hopper", ""),  # gender unknown
    ("img/lena_1.jpg", "22", "Lena Berg", "F"),
    ("img/lena_2.jpg", "23", "Lena Berg", "F"),  # corrupt file
    ("img/lena_3.jpg", "24", "Lena Berg", "f"),
    ("img/child.jpg", "5", "", "M"),  # no identity: split by path (train)
    ("img/missing.jpg", "40", "Bob Jones", "M"),  # no such file
    ("img/alice_1.jpg", "30", "Alice Smith", "F"),  # listed twice
    ("img/bob_3.jpg", "abc", "Bob Jones", "M"),
    ("img/bob_4.jpg", "150", "Bob Jones", "M"),
    ("img/bob_5.jpg", "40", "Bob Jones", "X"),
]
LABELS_SPLITS = {"train": 5, "validation": 2, "test": 2}
LABELS_REPORT = dict(
    total=15, kept=9, dropped=6, kept_per_split=dict(test=2, train=5, validation=2),
    dropped_per_reason=dict(bad_age=2, bad_gender=1, duplicate_path=1, missing_image=1,
                            undecodable_image=1))

# other/plain.csv: paths only, split by a hash of the path; relative to other/.
PLAIN = [("imgs/face_00.jpg", "10"), ("imgs/face_02.jpg", "20"), ("imgs/face_03.jpg", "30"),
         ("imgs/face_01.jpg", "40"), ("imgs/face_43.jpg", "50"), ("imgs/face_33.jpg", "60")]
PLAIN_SPLITS = {"train": 3, "validation": 2, "test": 1}

# boxes.csv: a split column and face boxes in 64x48 photos.
BOX = ("16", "8", "40", "32")
BOXES = [
    ("box/b0.jpg", "20", "train", BOX),
    ("box/b1.jpg", "21", "TRAIN", BOX),
    ("box/b2.jpg", "22", "valid", BOX),
    ("box/b3.jpg", "23", "test", BOX),
    ("box/b4.jpg", "24", "holdout", BOX),  # unknown split
    ("box/b5.jpg", "25", "train", ("1000", "1000", "1010", "1010")),  # outside the photo
    ("box/b6.jpg", "26", "train", ("40", "8", "16", "32")),  # x2 < x1
    ("box/b7.jpg", "27", "train", ("", "", "", "")),
]
BOXES_SPLITS = {"train": 2, "validation": 1, "test": 1}
BOXES_REPORT = dict(total=8, kept=4, dropped=4, kept_per_split=dict(test=1, train=2, validation=1),
                    dropped_per_reason=dict(bad_box=3, bad_split=1))
PLAIN_CONFIG = age_csv.AgeCsvConfig(name="plain", csv="other/plain.csv", image_size=32)
BOXES_CONFIG = age_csv.AgeCsvConfig(name="boxes", csv="boxes.csv", image_size=32, margin=0.25)


def color(age: int) -> tuple[int, int, int]:
  return (3 * age % 256, 200 - age, 40 + 2 * age)


def photo(age: int) -> np.ndarray:
  """A 64x48 photo: grey surround, a coloured 'face' at BOX, a darker corner."""
  image = np.full((48, 64, 3), 128, np.uint8)
  image[8:32, 16:40] = color(age)
  image[:, :8] = 30
  return image


def write_csv(path, header, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def save(path: str, image=None, gray=None, corrupt=False) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if corrupt:
    with open(path, "wb") as f:
      f.write(b"GIF89a but not really")
  elif gray is not None:
    Image.new("L", (40, 40), gray).save(path, quality=95)
  else:
    Image.fromarray(image).save(path, quality=95)


def write_data(root: str) -> None:
  write_csv(os.path.join(root, "labels.csv"), ["path", "age", "identity", "gender"], LABELS)
  for path, age, _, _ in LABELS:
    full = os.path.join(root, path)
    if "missing" in path or os.path.exists(full) or not age.replace(".", "").isdigit():
      continue
    if path.endswith("bob_1.jpg"):
      save(full, gray=99)
    else:
      save(full, corrupt=path.endswith("lena_2.jpg"),
           image=np.full((40, 40, 3), color(int(float(age)) % 100), np.uint8))
  write_csv(os.path.join(root, "other", "plain.csv"), ["path", "age"], PLAIN)
  for path, age in PLAIN:
    save(os.path.join(root, "other", path), image=np.full((40, 40, 3), color(int(age)), np.uint8))
  write_csv(os.path.join(root, "boxes.csv"), ["path", "age", "split", "x1", "y1", "x2", "y2"],
            [(p, a, s, *b) for p, a, s, b in BOXES])
  for path, age, _, _ in BOXES:
    save(os.path.join(root, path), image=photo(int(age)))


class _Case(builder_testing.ReleaseTestCase):
  DATASET_CLASS = age_csv.Builder

  write_release = staticmethod(write_data)


class AgeCsvIdentityTest(_Case):
  BUILDER_CONFIG_NAMES_TO_TEST = ["default"]
  SPLITS = LABELS_SPLITS


class AgeCsvPathTest(_Case):
  BUILDER_CONFIG_NAMES_TO_TEST = [PLAIN_CONFIG]
  SPLITS = PLAIN_SPLITS


class AgeCsvBoxTest(_Case):
  BUILDER_CONFIG_NAMES_TO_TEST = [BOXES_CONFIG]
  SPLITS = BOXES_SPLITS


del _Case  # not a test of its own


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp("manual"))
  write_data(manual)
  return manual, str(tmp_path_factory.mktemp("data"))


def build(config, dirs):
  manual, data = dirs
  builder = age_csv.Builder(data_dir=data, config=config)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return builder


def examples(builder, split):
  return {ex["file_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def report(builder):
  with open(os.path.join(builder.data_dir, "cleaning_report.json")) as f:
    return json.load(f)


def test_identity_splits_are_person_disjoint(dirs):
  builder = build(age_csv.AgeCsvConfig(name="ids", image_size=32), dirs)
  assert report(builder) == LABELS_REPORT
  gender = builder.info.features["gender"]
  people = {}
  want = {p: (a, i, g) for p, a, i, g in LABELS}
  for split in LABELS_SPLITS:
    for path, ex in examples(builder, split).items():
      age, identity, g = want[path]
      assert ex["age"] == int(float(age)) and ex["identity"].decode() == identity.strip()
      assert gender.int2str(ex["gender"]) == {"": "unknown", "f": "female", "female": "female",
                                              "m": "male"}[g.lower()]
      if identity.strip():
        people.setdefault(common.normalize_name(identity), set()).add(split)
      grey = path.endswith("bob_1.jpg")
      np.testing.assert_allclose(ex["image"].reshape(-1, 3).mean(0),
                                 (99,) * 3 if grey else color(int(float(age)) % 100), atol=3)
  assert people == {"alice smith": {"train"}, "bob jones": {"train"},
                    "grace hopper": {"validation"}, "lena berg": {"test"}}


def test_identity_folders_split_people_for_the_protocol(dirs):
  builder = build(age_csv.AgeCsvConfig(name="folders", image_size=32, identity_folders=10), dirs)
  names = sorted(builder.info.splits)
  assert all(n.startswith("folder") for n in names)
  people = {}
  for split in names:
    for path, ex in examples(builder, split).items():
      key = common.normalize_name(ex["identity"].decode()) or path
      assert split == common.split_of(key, (0.1,) * 10, tuple(f"folder{k}" for k in range(10)))
      people.setdefault(key, set()).add(split)
  assert all(len(s) == 1 for s in people.values())  # a person is in one folder
  assert sum(len(examples(builder, s)) for s in names) == LABELS_REPORT["kept"]
  # The protocol resolves its splits from these folders.
  assert folders.available_folders(names) == [int(n[len("folder"):]) for n in
                                              sorted(names, key=lambda n: int(n[6:]))]


def test_path_split_without_identity(dirs):
  builder = build(PLAIN_CONFIG, dirs)
  got = {split: sorted(examples(builder, split)) for split in PLAIN_SPLITS}
  assert got == {"train": ["imgs/face_00.jpg", "imgs/face_02.jpg", "imgs/face_03.jpg"],
                 "validation": ["imgs/face_01.jpg", "imgs/face_43.jpg"],
                 "test": ["imgs/face_33.jpg"]}
  assert {ex["identity"] for ex in examples(builder, "train").values()} == {b""}
  # Without a box the photo is the face: its shorter side.
  assert {ex["face_size"] for ex in examples(builder, "train").values()} == {40}  # 40x40
  assert report(builder)["dropped"] == 0


def test_split_column_and_face_boxes(dirs):
  builder = build(BOXES_CONFIG, dirs)
  with open(os.path.join(dirs[0], "box", "b0.jpg"), "rb") as f:
    source = face_crop.decode_rgb(f.read())
  assert report(builder) == BOXES_REPORT
  got = {split: examples(builder, split) for split in BOXES_SPLITS}
  assert {s: sorted(e) for s, e in got.items()} == {
      "train": ["box/b0.jpg", "box/b1.jpg"], "validation": ["box/b2.jpg"], "test": ["box/b3.jpg"]}
  # The box widened by a quarter of its size per side, as the shared crop does
  # it; other margins, or the whole photo, look clearly different.
  ex = got["train"]["box/b0.jpg"]
  distance = lambda box, margin: np.abs(
      ex["image"].astype(int) - face_crop.crop_face(source, box, margin=margin, size=32)).mean()
  assert distance([16, 8, 40, 32], 0.25) < 5
  assert min(distance([16, 8, 40, 32], 0.0), distance([16, 8, 40, 32], 0.4),
             distance(None, 0.0)) > 10
  assert ex["gender"] == 2  # unknown: no gender column
  assert ex["face_size"] == 24  # the box's shorter side: min(40 - 16, 32 - 8)


def test_named_variant_loads_by_name(dirs):
  build(BOXES_CONFIG, dirs)
  # A variant not in the code is read back from its prepared files.
  builder = tfds.builder("age_csv/boxes", data_dir=dirs[1])
  assert {s: builder.info.splits[s].num_examples for s in BOXES_SPLITS} == BOXES_SPLITS
  assert builder.info.features["image"].shape == (32, 32, 3)
  # The age card reads face_size from the built variant, in stored order.
  data_cfg = ml_collections.ConfigDict({"dataset": "age_csv/boxes", "data_dir": dirs[1]})
  assert attributes.available(data_cfg) == ["identity", "gender", "face_size"]
  assert attributes.read(data_cfg, "train", ["face_size"])["face_size"].tolist() == [24, 24]


def test_missing_columns_are_named():
  with pytest.raises(ValueError, match=r"lacks the columns \['age'\]"):
    age_csv.age_csv_dataset_builder.read_rows("path,years\na.jpg,3\n", common.DEFAULT_FRACTIONS,
                                              common.CleaningReport())
