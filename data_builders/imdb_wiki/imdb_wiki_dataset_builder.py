"""IMDB-WIKI (Rothe et al., DEX) as a TFDS dataset: cleaned, face-cropped, person-disjoint.

Build (reads the release from --manual_dir, never the network):

  tfds build data_builders/imdb_wiki --manual_dir=M --data_dir=D [--config=clean]
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_builders import common
# Relative imports: `tfds build data_builders/imdb_wiki` loads this package as
# `imdb_wiki`, `import data_builders.imdb_wiki` as `data_builders.imdb_wiki`.
from . import cleaning
from . import release

# Importing data_builders.common pins TFDS's GCS lookups off for the whole
# process (`tfds build` included): the release comes from the manual dir only.
REPORT_FILE = common.REPORT_FILE
_BEAM_NAMESPACE = "imdb_wiki"
_INF = float("inf")


@dataclasses.dataclass(eq=False)
class ImdbWikiConfig(tfds.core.BuilderConfig):
  """Which images to keep and how to store them.

  Attributes:
    min_face_score: images whose face score is below this are dropped
      (low_score). Images with no face found (score -inf) are always dropped.
    max_second_face_score: images whose second face scores above this are
      dropped (second_face); -inf drops any second face, inf keeps them all.
    min_age: youngest age kept (age_out_of_range below).
    max_age: oldest age kept.
    min_image_side: images narrower or lower than this are dropped (too_small);
      2 drops the release's 1x1 placeholder images.
    margin: the face box is widened by this fraction of its size on each side.
    image_size: stored images are image_size x image_size RGB JPEGs.
    split_fractions: train, validation and test fractions of the people.
    reduced_decode: decode large JPEGs at 1/2..1/8 scale (libjpeg's DCT scaling)
      when the crop keeps at least twice the stored pixels a side (face_crop).
  """

  min_face_score: float = 1.0
  max_second_face_score: float = -_INF
  min_age: int = 0
  max_age: int = 100
  min_image_side: int = 2
  margin: float = 0.4
  image_size: int = 256
  reduced_decode: bool = True
  split_fractions: tuple[float, float, float] = common.DEFAULT_FRACTIONS

  def rules(self) -> cleaning.Rules:
    return cleaning.Rules(
        min_face_score=self.min_face_score,
        max_second_face_score=self.max_second_face_score,
        min_age=self.min_age,
        max_age=self.max_age,
        min_image_side=self.min_image_side,
        margin=self.margin,
        image_size=self.image_size,
        reduced_decode=self.reduced_decode,
    )


def _beam_process(task: cleaning.Task, rules: cleaning.Rules):
  """Beam's version of one image: drops and keeps go to Beam counters."""
  beam = tfds.core.lazy_imports.apache_beam
  result = cleaning.process(task, rules)
  if isinstance(result, str):
    beam.metrics.Metrics.counter(_BEAM_NAMESPACE, f"dropped:{result}").inc()
    return
  beam.metrics.Metrics.counter(_BEAM_NAMESPACE, f"kept:{task.split}").inc()
  yield result


class Builder(common.ReportingBuilder):
  """IMDB-WIKI face crops with real ages, from the manually downloaded release."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release: clean and raw configs, person-disjoint splits.",
                   "1.1.0": "face_size: the source face box's shorter side in pixels."}
  BUILDER_CONFIGS = [
      ImdbWikiConfig(
          name="clean",
          description=("One confident face (score >= 1, no second face), "
                       "age 0-100, valid birth date."),
      ),
      ImdbWikiConfig(
          name="raw",
          description="Every decodable image with a face found and age 0-100.",
          min_face_score=-_INF,
          max_second_face_score=_INF,
          min_image_side=1,
      ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "clean"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download the cropped faces of IMDB-WIKI from
  https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/ and put in --manual_dir
  imdb_crop.tar and/or wiki_crop.tar, either as they are or extracted
  (imdb_crop/ with imdb_crop/imdb.mat, wiki_crop/ with wiki_crop/wiki.mat).
  """

  def __init__(self, **kwargs: Any):
    super().__init__(**kwargs)
    self._use_beam = False
    self._seconds_generating = 0.0
    self._images_read = 0

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=common.face_features(
            size,
            identity=tfds.features.Text(),
            source=tfds.features.ClassLabel(names=release.SOURCES),
            file_name=tfds.features.Text(),
            face_score=tfds.features.Scalar(dtype=np.float32),
            face_size=common.FACE_SIZE,
        ),
        supervised_keys=("image", "age"),
        homepage="https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/",
        metadata=tfds.core.MetadataDict(),
    )

  def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager,
                            download_config: tfds.download.DownloadConfig) -> None:
    # TFDS hands the Beam settings to the split builder only; the same test
    # decides here whether `_generate_examples` returns a Beam transform.
    self._use_beam = bool(download_config.beam_runner or download_config.beam_options)
    self._seconds_generating = 0.0
    self._images_read = 0
    # common.ReportingBuilder starts self._report, and writes and prints it.
    super()._download_and_prepare(dl_manager, download_config)
    # TFDS writes the dataset info after this returns, so the report lands in
    # builder.info.metadata too.
    self.info.metadata["cleaning_report"] = self._report.as_dict()
    if self._seconds_generating > 0:
      print(f"images read: {self._images_read:,} in {self._seconds_generating:.1f} s "
            f"({self._images_read / self._seconds_generating:.1f} images/s)", flush=True)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = epath.Path(dl_manager.manual_dir)
    parts = release.find_parts(manual_dir)
    if not parts:
      raise FileNotFoundError(
          f"No IMDB-WIKI release in {manual_dir}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    logging.info("IMDB-WIKI parts: %s",
                 ", ".join(f"{p.source} ({p.form}: {p.describe()})" for p in parts))
    config = self.builder_config
    tasks = cleaning.plan(parts, config.rules(), tuple(config.split_fractions), self._report)
    empty = [split for split, split_tasks in tasks.items() if not split_tasks]
    if empty:
      # TFDS cannot write a split without examples; a tiny release may have
      # no person hashed into validation or test.
      logging.warning("IMDB-WIKI: no images for split(s) %s; left out.", ", ".join(empty))
    return {split: self._generate_examples(tasks=split_tasks)
            for split, split_tasks in tasks.items() if split_tasks}

  def _generate_examples(self, tasks: list[cleaning.Task]):
    """A Beam transform when the build runs on Beam, else a local generator."""
    rules = self.builder_config.rules()
    if self._use_beam:
      beam = tfds.core.lazy_imports.apache_beam
      return beam.Create(tasks) | beam.FlatMap(_beam_process, rules=rules)
    return self._generate_locally(tasks, rules)

  def _generate_locally(self, tasks: list[cleaning.Task], rules: cleaning.Rules):
    start = time.perf_counter()
    results = cleaning.ordered_map(lambda task: cleaning.process(task, rules),
                                   tasks, workers=cleaning.default_workers())
    for task, result in zip(tasks, results):
      self._images_read += 1
      if isinstance(result, str):
        self._report.drop(result)
        continue
      self._report.keep(task.split)
      yield result
    self._seconds_generating += time.perf_counter() - start

  def _process_pipeline_result(self, pipeline_result) -> None:
    beam = tfds.core.lazy_imports.apache_beam
    query = beam.metrics.MetricsFilter().with_namespace(_BEAM_NAMESPACE)
    for counter in pipeline_result.metrics().query(query)["counters"]:
      count = counter.committed if counter.committed is not None else counter.attempted
      kind, _, what = counter.key.metric.name.partition(":")
      (self._report.kept if kind == "kept" else self._report.dropped)[what] += int(count)
