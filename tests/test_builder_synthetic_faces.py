"""synthetic_faces: a small build, determinism, and age that shows in the picture."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import builder_testing

from agejax.data import face_crop
from data_builders import synthetic_faces
from data_builders.synthetic_faces import faces

SMALL = synthetic_faces.SyntheticFacesConfig(
    name="small", image_size=32, num_train=40, num_validation=8, num_test=8, seed=3)


class SyntheticFacesTest(builder_testing.ReleaseTestCase):
  """Nothing is read: the case still wants a folder of example files."""

  DATASET_CLASS = synthetic_faces.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = [SMALL]
  SPLITS = {"train": 40, "validation": 8, "test": 8}


def test_configs_are_the_documented_ones():
  configs = {c.name: c for c in synthetic_faces.Builder.BUILDER_CONFIGS}
  sizes = {name: (c.image_size, c.num_train, c.num_validation, c.num_test, c.seed)
           for name, c in configs.items()}
  assert sizes == {"default": (64, 4096, 512, 512, 0), "tiny": (32, 256, 64, 64, 0),
                   "thin_extremes": (64, 4096, 512, 512, 0),
                   "tiny_thin_extremes": (32, 256, 64, 64, 0)}
  assert {n: (c.keep_extremes, c.young_below, c.old_above) for n, c in configs.items()} == {
      "default": (1.0, 13, 70), "tiny": (1.0, 13, 70), "thin_extremes": (0.1, 13, 70),
      "tiny_thin_extremes": (0.1, 13, 70)}
  assert synthetic_faces.Builder.DEFAULT_CONFIG_NAME == "default"


def test_a_thinned_train_split_keeps_its_middle_and_a_seeded_share_of_its_extremes(tmp_path):
  thinned = dataclasses.replace(SMALL, name="thin", num_train=400, keep_extremes=0.25)
  builder = synthetic_faces.Builder(data_dir=str(tmp_path), config=thinned)
  builder.download_and_prepare()
  generated = [faces.example(3, "train", i, 32) for i in range(400)]
  extreme = [face.age < 13 or face.age > 70 for _, face in generated]
  kept = [i for i in range(400) if not extreme[i] or faces.kept(3, i, generated[i][1].age,
                                                                 0.25, 13, 70)]
  ds = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
  got = sorted((int(ex["age"]), ex["image"]) for ex in tfds.as_numpy(ds))
  assert got == sorted((generated[i][1].age, face_crop.encode_jpeg(generated[i][0]))
                       for i in kept)
  n_extreme = sum(extreme)  # 400 uniform ages 0..100: about 40% at the extremes
  kept_extreme = len(kept) - (400 - n_extreme)
  # Binomial(n_extreme, 0.25): within 4 of its std of the mean.
  assert abs(kept_extreme - 0.25 * n_extreme) < 4 * (n_extreme * 0.25 * 0.75) ** 0.5
  assert builder.info.splits["validation"].num_examples == 8  # other splits whole
  with open(os.path.join(builder.data_dir, "cleaning_report.json")) as f:
    assert json.load(f)["dropped_per_reason"] == {
        "train face thinned at the age extremes": 400 - len(kept)}


def test_same_seed_same_bytes():
  for index in (0, 17):
    a, face_a = faces.example(5, "train", index, 64)
    b, face_b = faces.example(5, "train", index, 64)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert a.tobytes() == b.tobytes() and face_a.age == face_b.age
    assert face_crop.encode_jpeg(a) == face_crop.encode_jpeg(b)
  # Another seed, split or index is another face.
  first = faces.example(5, "train", 0, 64)[0]
  for other in (faces.example(6, "train", 0, 64)[0], faces.example(5, "test", 0, 64)[0],
                faces.example(5, "train", 1, 64)[0]):
    assert np.abs(first.astype(int) - other).mean() > 10


def test_built_examples_are_the_generated_ones(tmp_path):
  builder = synthetic_faces.Builder(data_dir=str(tmp_path), config=SMALL)
  builder.download_and_prepare()
  with open(os.path.join(builder.data_dir, "cleaning_report.json")) as f:
    assert json.load(f) == dict(total=56, kept=56, dropped=0, dropped_per_reason={},
                                kept_per_split=dict(test=8, train=40, validation=8))
  ds = builder.as_dataset(split="validation", decoders={"image": tfds.decode.SkipDecoding()})
  got = sorted((int(ex["age"]), int(ex["gender"]), ex["image"], ex["key"].decode())
               for ex in tfds.as_numpy(ds))
  want = []
  for index in range(8):
    image, face = faces.example(3, "validation", index, 32)
    want.append((face.age, ["female", "male"].index(face.gender), face_crop.encode_jpeg(image),
                 f"validation/{index:06d}"))
  assert got == sorted(want)


@pytest.fixture(scope="module")
def sample():
  """512 faces at 64x64, as in the default config's validation split."""
  pairs = [faces.example(0, "validation", i, 64) for i in range(512)]
  return np.stack([p[0] for p in pairs]), pairs


def test_ages_cover_0_to_100_and_both_genders(sample):
  _, pairs = sample
  ages = np.array([face.age for _, face in pairs])
  assert ages.min() == 0 and ages.max() == 100
  assert 0.4 < np.mean([face.gender == "female" for _, face in pairs]) < 0.6


def test_hair_patch_is_always_hair(sample):
  """The documented hair patch lies in the hair of every face, at any size."""
  _, pairs = sample
  for size in (32, 64):
    r0, r1 = (int(round(f * size)) for f in faces.HAIR_PATCH_ROWS)
    c0, c1 = (int(round(f * size)) for f in faces.HAIR_PATCH_COLS)
    for _, face in pairs:
      clean = faces.draw_face(dataclasses.replace(face, gain=1.0), size)  # no noise
      hair = np.round((1 - face.grey) * face.hair + face.grey * face.grey_level)
      assert np.abs(clean[r0:r1, c0:c1] - hair).max() <= 1


def test_age_is_learnable_from_hair_brightness(sample):
  """One pixel statistic, blind to every nuisance, already follows age."""
  images, pairs = sample
  ages = np.array([face.age for _, face in pairs])
  brightness = faces.hair_brightness(images)
  assert np.corrcoef(brightness, ages)[0, 1] > 0.9
  # Least squares on that statistic alone: far better than guessing the mean.
  design = np.stack([brightness, np.ones_like(brightness)], 1)
  fit = design @ np.linalg.lstsq(design, ages, rcond=None)[0]
  assert np.abs(fit - ages).mean() < 0.5 * np.abs(ages - ages.mean()).mean()


def test_children_have_lower_larger_eyes_and_adults_wrinkles():
  young = faces.sample_face(np.random.default_rng(0))
  young = dataclasses.replace(young, age=2, grey=0.0)
  old = dataclasses.replace(young, age=80)
  a = faces.draw_face(young, 64).astype(int)
  b = faces.draw_face(old, 64).astype(int)
  # Same nuisance, other age: the pictures differ where the drawing follows age.
  assert np.abs(a - b).mean() > 2
  # Forehead lines make the old face's forehead band darker than the child's.
  cx, cy = young.center
  rows = slice(int(0.36 * 64), int(0.44 * 64))
  cols = slice(int((cx - 0.1) * 64), int((cx + 0.1) * 64))
  assert b[rows, cols].mean() < a[rows, cols].mean() - 5
