"""The face age benchmark's databases: one JSON per dataset, identity-disjoint folders.

Paplham & Franc's benchmark (github.com/paplhjak/Facial-Age-Estimation-Benchmark,
split files in .../Facial-Age-Estimation-Benchmark-Databases) describes nine
datasets in one format: a JSON list of entries ``{"img_path", "age",
"gender", "database", "folder", "aligned_bbox", "alignment_source"}`` plus an
identity (``id_num``, or ``name`` where a release has no number). Every
person's images share one ``folder``: 0-9 for seven datasets, 0/1/2 =
train/val/test for CLAP2016 and CACD2000. The benchmark's five splits are
folder sets (``agejax.data.folders``).

Each TFDS split here is one folder, ``folder0`` ... ``folder9``; a protocol
split is their sum (``folder0+folder1+...``, TFDS's split arithmetic). Each
face is its ``aligned_bbox`` (a rotated box, four corners in the original
image) warped to an upright square at ``image_size`` (``face_crop.warp_box``).

Manual dir: the database JSON (``<Name>_aligned.json``, the file with the
boxes; or ``database_file`` of a custom config) and the original images at
the JSON's ``img_path``s, relative to the manual dir.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from agejax.data import face_crop
from agejax.data import folders
from data_builders import common

MAX_AGE = 120
# The benchmark's gender letters, mapped to the common labels.
GENDERS = {"M": "male", "F": "female"}
REPORT_FILE = common.REPORT_FILE


@dataclasses.dataclass(eq=False)
class FacebaseConfig(tfds.core.BuilderConfig):
  """One benchmark database.

  Attributes:
    database_file: the JSON in the manual dir.
    image_size: side of the stored square crop (their recipe: 256).
  """
  database_file: str = ""
  image_size: int = face_crop.DEFAULT_SIZE


# (config name, JSON file): the benchmark's nine databases.
DATABASES = (
    ("afad", "AFAD-Full_aligned.json"),
    ("agedb", "AgeDB_aligned.json"),
    ("cacd2000", "CACD2000_aligned.json"),
    ("clap2016", "CLAP2016_aligned.json"),
    ("fgnet", "FG-Net_aligned.json"),
    ("imdb_clean_fp_age", "IMDB-CLEAN-FP-AGE_aligned.json"),
    ("imdb_em_cnn", "IMDB-EM-CNN_aligned.json"),
    ("morph", "MORPH_aligned.json"),
    ("utkface", "UTKFace_aligned.json"),
)


def identity_of(entry: dict[str, Any]) -> str:
  """The person: ``id_num``, else ``name``, else the image (a person of one image)."""
  for key in ("id_num", "name"):
    if entry.get(key) not in (None, ""):
      return str(entry[key]).strip()
  return str(entry["img_path"])


def read_database(path: epath.Path) -> list[dict[str, Any]]:
  """The JSON's entries; a file that is not a list of objects with a folder raises."""
  try:
    entries = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise common.ReleaseError(path, f"not a readable JSON file ({e})") from e
  if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
    raise common.ReleaseError(path, "expected a JSON list of entries (objects)")
  for i, entry in enumerate(entries):
    missing = [k for k in ("img_path", "age", "folder") if k not in entry]
    if missing:
      raise common.ReleaseError(path, f"entry {i} has no {', '.join(missing)}: {entry}")
  return entries


class Builder(common.ReportingBuilder):
  """The face age benchmark's databases, one TFDS split per identity folder."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Aligned-box crops, one split per benchmark folder."}
  BUILDER_CONFIGS = [FacebaseConfig(name=name, database_file=file,
                                    description=f"{file} with its images, crops at 256 px.")
                     for name, file in DATABASES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the database's `<Name>_aligned.json` from
  github.com/paplhjak/Facial-Age-Estimation-Benchmark-Databases in the manual
  dir, and the dataset's original images at the paths its `img_path`s name
  (relative to the manual dir, e.g. AgeDB/AgeDB/..., AFAD/AFAD-Full/...).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=common.face_features(
            self.builder_config.image_size,
            folder=tfds.features.Scalar(np.int32),
            identity=tfds.features.Text(),
            database=tfds.features.Text(),
            source_path=tfds.features.Text(),
        ),
        supervised_keys=("image", "age"),
        homepage="https://github.com/paplhjak/Facial-Age-Estimation-Benchmark",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = epath.Path(dl_manager.manual_dir)
    path = manual_dir / self.builder_config.database_file
    if not path.exists():
      raise FileNotFoundError(f"{path} not found: put the benchmark's "
                              f"{self.builder_config.database_file} in the manual dir")
    by_folder: dict[int, list[tuple[int, dict[str, Any]]]] = collections.defaultdict(list)
    for i, entry in enumerate(read_database(path)):
      try:
        folder = int(entry["folder"])
      except (TypeError, ValueError):
        raise common.ReleaseError(path, f"entry {i}: folder {entry['folder']!r} is not a "
                                  "number") from None
      by_folder[folder].append((i, entry))
    return {folders.FOLDER_SPLIT.format(f): self._generate_examples(manual_dir, rows)
            for f, rows in sorted(by_folder.items())}

  def _generate_examples(self, manual_dir: epath.Path, rows) -> Iterator[tuple[str, dict]]:
    size = self.builder_config.image_size
    for i, entry in rows:
      split = folders.FOLDER_SPLIT.format(int(entry["folder"]))
      age = entry["age"]
      if not isinstance(age, (int, float)) or not 0 <= age <= MAX_AGE:
        self._report.drop("unknown_age" if age == -1 else "age_out_of_range")
        continue
      if not entry.get("aligned_bbox"):
        self._report.drop("no_aligned_bbox")
        continue
      image_file = manual_dir / entry["img_path"]
      if not image_file.is_file():
        self._report.drop("missing_image")
        continue
      try:
        image = face_crop.decode(image_file.read_bytes())
      except face_crop.UndecodableImage:
        self._report.drop("undecodable_image")
        continue
      try:
        crop = face_crop.warp_box(image, entry["aligned_bbox"], size)
      except ValueError:
        self._report.drop("bad_aligned_bbox")
        continue
      self._report.keep(split)
      # The entry's index keys it: one image may hold several annotated faces.
      yield str(i), dict(
          image=face_crop.encode_jpeg(crop), age=int(round(age)),
          gender=GENDERS.get(str(entry.get("gender", "")).upper(), "unknown"),
          folder=int(entry["folder"]), identity=identity_of(entry),
          database=str(entry.get("database", "")), source_path=str(entry["img_path"]))
