"""Synthetic cartoon faces with ages 0..100, drawn on the spot from a seed.

A stand-in dataset, not a benchmark: it lets the whole training program run
(and tests train on something learnable) with nothing downloaded. How age
shows in the drawing is described in ``faces.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import tensorflow_datasets as tfds

from agejax.data import face_crop
from data_builders import common
from data_builders.synthetic_faces import faces


REPORT_FILE = common.REPORT_FILE


@dataclasses.dataclass(eq=False)
class SyntheticFacesConfig(tfds.core.BuilderConfig):
  """Size and seed of the generated dataset.

  Attributes:
    image_size: side of the stored square image in pixels.
    num_train: examples in the train split.
    num_validation: examples in the validation split.
    num_test: examples in the test split.
    seed: the same seed gives the same pictures, bit for bit.
    keep_extremes: the share of the generated training faces under
      ``young_below`` or over ``old_above`` that the train split keeps (each
      kept or dropped by its own seeded draw; the pictures and the other
      splits are unchanged): a training set thin at the age extremes, as
      the real ones are.
    young_below, old_above: the extremes, in whole years.
  """
  image_size: int = 64
  num_train: int = 4096
  num_validation: int = 512
  num_test: int = 512
  seed: int = 0
  keep_extremes: float = 1.0
  young_below: int = 13
  old_above: int = 70


class Builder(common.ReportingBuilder):
  """Cartoon faces whose age shows in proportions, grey hair and wrinkles."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Proportions, grey hair and wrinkles follow age; uniform ages 0..100.",
                   "1.1.0": "key: each face's split and generated index (train/000017)."}
  BUILDER_CONFIGS = [
      SyntheticFacesConfig(name="default", description="4096/512/512 faces at 64x64, seed 0."),
      # For tests and smoke runs: builds in about a second.
      SyntheticFacesConfig(name="tiny", description="256/64/64 faces at 32x32, seed 0.",
                           image_size=32, num_train=256, num_validation=64, num_test=64),
      # The default faces with the training set thinned at both ends.
      SyntheticFacesConfig(name="thin_extremes", keep_extremes=0.1,
                           description="default, but the train split keeps 10% of the faces "
                                       "under 13 and over 70."),
      SyntheticFacesConfig(name="tiny_thin_extremes", keep_extremes=0.1,
                           description="tiny, but the train split keeps 10% of the faces under "
                                       "13 and over 70.",
                           image_size=32, num_train=256, num_validation=64, num_test=64),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=common.face_features(size, key=tfds.features.Text()),
        supervised_keys=("image", "age"),
    )


  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download or read
    config = self.builder_config
    sizes = dict(train=config.num_train, validation=config.num_validation, test=config.num_test)
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split: str, count: int) -> Iterator[tuple[int, dict]]:
    config = self.builder_config
    for index in range(count):
      image, face = faces.example(config.seed, split, index, config.image_size)
      if split == "train" and not faces.kept(config.seed, index, face.age, config.keep_extremes,
                                             config.young_below, config.old_above):
        self._report.drop("train face thinned at the age extremes")
        continue
      self._report.keep(split)
      yield index, dict(image=face_crop.encode_jpeg(image), age=face.age, gender=face.gender,
                        key=faces.key(split, index))
