"""APPA-REAL: apparent and real age of 7,591 faces, with the official splits.

The release (Agustsson et al. 2017) ships every photo with an aligned face
crop next to it (``NNNNNN.jpg_face.jpg``) and one CSV of labels per split.
This builder reads the crops from the zip as downloaded or from the extracted
folder, so nothing is unpacked twice, and never touches the network.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import zipfile
from typing import Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from agejax.data import face_crop
from data_builders import common


RELEASE_DIR = "appa-real-release"
RELEASE_ZIP = "appa-real-release.zip"
# TFDS split name -> folder (and CSV suffix) in the release.
SPLIT_FOLDERS = {"train": "train", "validation": "valid", "test": "test"}
CSV_COLUMNS = ("file_name", "num_ratings", "apparent_age_avg", "apparent_age_std", "real_age")
FACE_SUFFIX = "_face.jpg"
MAX_AGE = 120
REPORT_FILE = common.REPORT_FILE


@dataclasses.dataclass(eq=False)
class AppaRealConfig(tfds.core.BuilderConfig):
  """How the face crops are stored.

  Attributes:
    image_size: side of the stored square image in pixels.
    reduced_decode: decode large JPEGs at 1/2..1/8 scale (libjpeg's DCT scaling)
      when the crop keeps at least twice the stored pixels a side (face_crop).
  """
  image_size: int = face_crop.DEFAULT_SIZE
  reduced_decode: bool = True


class _Release:
  """Read access to the release's files, zipped or extracted.

  Paths are relative to the release's top folder, e.g. ``train/000000.jpg``.
  """

  def __init__(self, manual_dir: epath.Path):
    self._zip = None
    self._file = None
    self._root = None
    self._prefix = ""
    for root in (manual_dir / RELEASE_DIR, manual_dir):
      if (root / "gt_avg_train.csv").exists():
        self._root = root
        return
    archive = manual_dir / RELEASE_ZIP
    if not archive.exists():
      raise FileNotFoundError(
          f"APPA-REAL not found in the manual dir {manual_dir}: expected {RELEASE_ZIP} or the "
          f"extracted folder {RELEASE_DIR}/ with gt_avg_train.csv in it.")
    self._file = archive.open("rb")
    self._zip = zipfile.ZipFile(self._file)
    # The zip holds one top folder; find it from the train labels rather than
    # assuming its name, so a re-zipped copy works too.
    for name in self._zip.namelist():
      if name.endswith("gt_avg_train.csv"):
        self._prefix = name[:-len("gt_avg_train.csv")]
        break
    else:
      raise FileNotFoundError(f"{archive} holds no gt_avg_train.csv: not the APPA-REAL release.")

  def read(self, path: str) -> bytes | None:
    """The file's bytes, or None when the release lacks it."""
    if self._zip is not None:
      try:
        return self._zip.read(self._prefix + path)
      except KeyError:
        return None
    file = self._root / path
    return file.read_bytes() if file.exists() else None

  def close(self) -> None:
    if self._zip is not None:
      self._zip.close()
      self._file.close()


def parse_row(row: dict[str, str]) -> tuple[float, float, int] | None:
  """(apparent age, its std, real age) of a CSV row, or None if unusable."""
  try:
    apparent = float(row["apparent_age_avg"])
    std = float(row["apparent_age_std"])
    real = float(row["real_age"])
  except (TypeError, ValueError):
    return None
  if not all(math.isfinite(v) for v in (apparent, std, real)):
    return None
  if not (0 <= real <= MAX_AGE and real == int(real) and 0 <= apparent <= MAX_AGE and std >= 0):
    return None
  return apparent, std, int(real)


class Builder(common.ReportingBuilder):
  """APPA-REAL face crops with apparent and real age."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Face crops of the official splits with apparent and real age."}
  BUILDER_CONFIGS = [AppaRealConfig(name="default", description="Face crops stored at 256x256.")]
  DEFAULT_CONFIG_NAME = "default"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download {RELEASE_ZIP} from https://chalearnlap.cvc.uab.cat/dataset/26/description/
  and put it in the manual dir (or extract it there, keeping the {RELEASE_DIR}/ folder).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": common.image_feature(size),
            "apparent_age": tfds.features.Scalar(np.float32),
            "apparent_age_std": tfds.features.Scalar(np.float32),
            "real_age": tfds.features.Scalar(np.int32),
            "age": tfds.features.Scalar(np.int32),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "apparent_age"),
        homepage="https://chalearnlap.cvc.uab.cat/dataset/26/description/",
    )


  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = epath.Path(dl_manager.manual_dir)
    return {split: self._generate_examples(manual_dir, split) for split in SPLIT_FOLDERS}

  def _generate_examples(self, manual_dir: epath.Path,
                         split: str) -> Iterator[tuple[str, dict]]:
    folder = SPLIT_FOLDERS[split]
    release = _Release(manual_dir)
    try:
      labels = release.read(f"gt_avg_{folder}.csv")
      if labels is None:
        raise FileNotFoundError(f"APPA-REAL release lacks gt_avg_{folder}.csv")
      reader = csv.DictReader(io.StringIO(labels.decode("utf-8-sig")))
      missing = set(CSV_COLUMNS) - set(reader.fieldnames or ())
      if missing:
        raise ValueError(f"gt_avg_{folder}.csv lacks the columns {sorted(missing)}")
      for row in reader:
        example = self._example(release, folder, row)
        if example is not None:
          self._report.keep(split)
          yield example["file_name"], example
    finally:
      release.close()

  def _example(self, release: _Release, folder: str, row: dict[str, str]) -> dict | None:
    """The example of one CSV row, or None (counted in the report)."""
    labels = parse_row(row)
    if labels is None:
      self._report.drop("bad_label")
      return None
    apparent, std, real = labels
    path = f"{folder}/{row['file_name']}{FACE_SUFFIX}"
    data = release.read(path)
    if data is None:
      self._report.drop("missing_image")
      return None
    try:
      image, _, _ = face_crop.decode_for_crop(data, None, size=self.builder_config.image_size,
                                              reduced=self.builder_config.reduced_decode)
    except face_crop.UndecodableImage:
      self._report.drop("undecodable_image")
      return None
    # The release's crops are already aligned: no margin, only the resize.
    image = face_crop.crop(image, None, size=self.builder_config.image_size)
    return dict(image=face_crop.encode_jpeg(image), apparent_age=np.float32(apparent),
                apparent_age_std=np.float32(std), real_age=real, age=real, file_name=path)
