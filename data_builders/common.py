"""Pieces every age builder shares: person-disjoint splits and the cleaning report."""

from __future__ import annotations

import collections
import hashlib
import os
import re
import unicodedata
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import gcs_utils

from agejax import json_files

# Builds and loads read local files only. TFDS falls back to its public bucket
# for dataset info when this flag is False (4.9.10 ships it True); pinning it
# means an upgrade that flips the default cannot make a build wait on GCS.
gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access

REPORT_FILE = "cleaning_report.json"
GENDERS = ("female", "male", "unknown")


class ReleaseError(ValueError):
  """A release file that cannot be read or lacks what the builder needs.

  The message starts with the file and says what was expected, so the last
  line of ``tfds build``'s output tells the user which download to replace.
  """

  def __init__(self, path: object, problem: str):
    self.path = str(path)
    super().__init__(f"{self.path}: {problem}")


def image_feature(size: int) -> tfds.features.Image:
  """Every builder stores square RGB JPEG face crops of ``size`` pixels."""
  return tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg")


def face_features(size: int, **extra: tfds.features.FeatureConnector) -> tfds.features.FeaturesDict:
  """The features the input pipeline relies on (image, int age, gender), plus ``extra``."""
  return tfds.features.FeaturesDict({
      "image": image_feature(size),
      "age": tfds.features.Scalar(np.int32),
      "gender": tfds.features.ClassLabel(names=list(GENDERS)),
      **extra,
  })

def face_size(box: Sequence[float]) -> int:
  """The ``face_size`` feature: a face box's shorter side, in pixels of the source photo.

  What NIST FATE reports accuracy against (face resolution); builders that
  know the box of the source photo store it, before any reduced decoding.
  """
  x1, y1, x2, y2 = (float(v) for v in box)
  return int(round(min(x2 - x1, y2 - y1)))


FACE_SIZE = tfds.features.Scalar(np.int32, doc="shorter side of the source face box, pixels")

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.90, 0.05, 0.05)


def normalize_name(name: str) -> str:
  """Case-, accent- and spacing-insensitive form of a person's name.

  "Brad  Pitt", "brad pitt" and "Brad Pitt " give the same key, so a person in
  both IMDB and Wikipedia lands in one split.
  """
  text = unicodedata.normalize("NFKD", name)
  text = "".join(c for c in text if not unicodedata.combining(c))
  return re.sub(r"\s+", " ", text).strip().lower()


def split_of(key: str, fractions: Sequence[float] = DEFAULT_FRACTIONS,
             splits: Sequence[str] = SPLITS) -> str:
  """The split of ``key`` by a stable hash (same on every machine and run)."""
  if len(fractions) != len(splits) or abs(sum(fractions) - 1.0) > 1e-6:
    raise ValueError(f"split fractions {tuple(fractions)} must sum to 1 over {tuple(splits)}")
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  u = int.from_bytes(digest[:8], "big") / 2**64
  edge = 0.0
  for split, fraction in zip(splits, fractions):
    edge += fraction
    if u < edge:
      return split
  return splits[-1]


class CleaningReport:
  """Counts of kept and dropped examples, per source and per drop reason."""

  def __init__(self):
    self.kept: collections.Counter[str] = collections.Counter()
    self.dropped: collections.Counter[str] = collections.Counter()

  def keep(self, split: str) -> None:
    self.kept[split] += 1

  def drop(self, reason: str) -> None:
    self.dropped[reason] += 1

  def merge(self, other: "CleaningReport") -> None:
    self.kept.update(other.kept)
    self.dropped.update(other.dropped)

  def as_dict(self) -> dict:
    kept_total = sum(self.kept.values())
    dropped_total = sum(self.dropped.values())
    return dict(
        total=kept_total + dropped_total,
        kept=kept_total,
        dropped=dropped_total,
        kept_per_split=dict(sorted(self.kept.items())),
        dropped_per_reason=dict(sorted(self.dropped.items())),
    )

  def format(self) -> str:
    d = self.as_dict()
    lines = [f"examples read: {d['total']:,}   kept: {d['kept']:,}   dropped: {d['dropped']:,}"]
    lines += [f"  kept in {s}: {n:,}" for s, n in d["kept_per_split"].items()]
    lines += [f"  dropped, {r}: {n:,}" for r, n in d["dropped_per_reason"].items()]
    return "\n".join(lines)

  def write(self, path: str) -> None:
    json_files.write_json(path, self.as_dict())


class ReportingBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose generation fills ``self._report`` (a CleaningReport).

  The report is written as JSON inside the version folder, which TFDS moves
  into place only once the whole build succeeded, and printed at the end.
  """

  def _download_and_prepare(self, dl_manager, download_config) -> None:
    self._report = CleaningReport()
    super()._download_and_prepare(dl_manager, download_config)
    self._report.write(os.fspath(self.data_path / REPORT_FILE))
    final = self.data_path.parent / str(self.version)  # where TFDS moves it
    print(f"{self.name}/{self.builder_config.name} cleaning report, {final / REPORT_FILE}:\n"
          f"{self._report.format()}")
