"""Any folder of face images with a CSV of ages: MORPH, AFAD, FG-NET, CACD, own data.

The CSV has the header ``path,age`` and, optionally, ``identity``, ``gender``,
``split`` and a face box ``x1,y1,x2,y2`` (pixels, x2/y2 exclusive); column
order is free. Paths are relative to the CSV's folder. Rows with a face box are
cropped with the shared DEX rule (box widened by ``margin``); without box
columns the whole image is resized, for releases that are crops already.

Splits: the ``split`` column when present; else a hash of the identity, which
keeps each person in one split; else a hash of the path.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Iterator, Sequence

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from agejax.data import face_crop
from agejax.data import folders
from data_builders import common


BOX_COLUMNS = ("x1", "y1", "x2", "y2")
GENDER_NAMES = {"f": "female", "female": "female", "w": "female", "woman": "female",
                "m": "male", "male": "male", "man": "male",
                "": "unknown", "u": "unknown", "unknown": "unknown"}
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "test": "test"}
MAX_AGE = 120
REPORT_FILE = common.REPORT_FILE


@dataclasses.dataclass(eq=False)
class AgeCsvConfig(tfds.core.BuilderConfig):
  """Where the labels are and how the faces are stored.

  Attributes:
    csv: the CSV's path, relative to the manual dir.
    image_size: side of the stored square image in pixels.
    reduced_decode: decode large JPEGs at 1/2..1/8 scale (libjpeg's DCT scaling)
      when the crop keeps at least twice the stored pixels a side (face_crop).
    margin: widening of a face box per side, as a fraction of its size.
    split_fractions: train, validation and test shares of the hash split.
    encoding: the CSV's text encoding (``utf-8-sig`` reads UTF-8 with or
      without a byte-order mark; e.g. ``latin-1`` or ``cp1252`` for others).
    identity_folders: > 0: instead of train/validation/test, that many
      equal identity folders ``folder0``... by the same hash of the same key
      (``common.split_of``), so the face age benchmark's
      protocol (``data.protocol_split``) runs on any CSV release; the
      ``split`` column is then ignored.
  """
  csv: str = "labels.csv"
  encoding: str = "utf-8-sig"
  image_size: int = face_crop.DEFAULT_SIZE
  margin: float = face_crop.DEFAULT_MARGIN
  reduced_decode: bool = True
  split_fractions: Sequence[float] = common.DEFAULT_FRACTIONS
  identity_folders: int = 0

  def __post_init__(self):
    # JSON configs (`tfds build --config='{...}'`) give lists.
    self.split_fractions = tuple(self.split_fractions)


@dataclasses.dataclass(frozen=True)
class Row:
  """One usable CSV row."""
  path: str
  age: int
  identity: str
  gender: str
  box: tuple[float, float, float, float] | None


def parse_age(text: str) -> int | None:
  """The age rounded to whole years, None unless a number in [0, MAX_AGE]."""
  try:
    age = float(text)
  except (TypeError, ValueError):
    return None
  if not math.isfinite(age) or not 0 <= age <= MAX_AGE:
    return None
  return int(round(age))


def parse_box(row: dict[str, str]) -> tuple[float, float, float, float] | None:
  """The face box of a row, None unless four finite numbers with x1 < x2, y1 < y2."""
  try:
    x1, y1, x2, y2 = (float(row[c]) for c in BOX_COLUMNS)
  except (TypeError, ValueError):
    return None
  if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
    return None
  return x1, y1, x2, y2


def read_rows(text: str, fractions: Sequence[float], report: common.CleaningReport,
              identity_folders: int = 0) -> dict[str, list[Row]]:
  """The CSV's usable rows by split; the others are counted in ``report``.

  ``identity_folders`` > 0: the splits are that many identity folders.
  """
  reader = csv.DictReader(io.StringIO(text))
  columns = set(reader.fieldnames or ())
  missing = {"path", "age"} - columns
  if missing:
    raise ValueError(f"the CSV lacks the columns {sorted(missing)}; its header is "
                     f"{reader.fieldnames}, expected path,age[,identity][,gender][,split]")
  has_box = set(BOX_COLUMNS) <= columns
  by_split = {split: [] for split in split_names(identity_folders)}
  seen = set()
  for record in reader:
    path = (record["path"] or "").strip()
    age = parse_age(record["age"])
    gender = GENDER_NAMES.get((record.get("gender") or "").strip().lower())
    identity = (record.get("identity") or "").strip()
    box = parse_box(record) if has_box else None
    if not path:
      reason = "no_path"
    elif path in seen:
      reason = "duplicate_path"
    elif age is None:
      reason = "bad_age"
    elif gender is None:
      reason = "bad_gender"
    elif has_box and box is None:
      reason = "bad_box"
    else:
      reason = None
    if reason:
      report.drop(reason)
      continue
    seen.add(path)
    # A person is keyed by name so that spelling variants stay together; a
    # row without identity can only be split by its own path.
    key = common.normalize_name(identity) if identity else path
    if identity_folders:
      split = common.split_of(key, (1 / identity_folders,) * identity_folders,
                              split_names(identity_folders))
    elif "split" in columns:
      split = SPLIT_NAMES.get((record["split"] or "").strip().lower())
      if split is None:
        report.drop("bad_split")
        continue
    else:
      split = common.split_of(key, fractions)
    by_split[split].append(Row(path, age, identity, gender, box))
  return by_split


def split_names(identity_folders: int = 0) -> tuple[str, ...]:
  """train/validation/test, or ``folder0``... for identity folders."""
  if identity_folders:
    return tuple(folders.FOLDER_SPLIT.format(k) for k in range(identity_folders))
  return common.SPLITS


class Builder(common.ReportingBuilder):
  """Face images listed in a CSV with their ages."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "CSV of path and age, optional identity, gender, split, face box.",
                   "1.1.0": "face_size: the face box's shorter side in pixels of the photo "
                            "(the photo's shorter side for rows without a box)."}
  BUILDER_CONFIGS = [
      AgeCsvConfig(name="default", description="labels.csv, faces stored at 256x256.")]
  DEFAULT_CONFIG_NAME = "default"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the images and a CSV with the header path,age[,identity][,gender][,split][,x1,y1,x2,y2]
  in the manual dir; paths are relative to the CSV's folder. The default config reads
  labels.csv; name your own variant with --config='{"name": "morph", "csv": "morph.csv"}'.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=common.face_features(
            size,
            # "" where the CSV names no person.
            identity=tfds.features.Text(),
            file_name=tfds.features.Text(),
            # Without a box the photo is the face: its shorter side.
            face_size=common.FACE_SIZE,
        ),
        supervised_keys=("image", "age"),
    )


  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    csv_path = epath.Path(dl_manager.manual_dir) / self.builder_config.csv
    if not csv_path.exists():
      raise FileNotFoundError(
          f"{csv_path} not found: config {self.builder_config.name!r} reads the CSV "
          f"{self.builder_config.csv!r} from the manual dir.")
    encoding = self.builder_config.encoding
    try:
      text = csv_path.read_bytes().decode(encoding)
    except UnicodeDecodeError as e:
      raise common.ReleaseError(csv_path, f"is not {encoding} text (byte {e.start}: "
                                f"{e.reason}); give its encoding in the builder config, e.g. "
                                "tfds build ... --config='{\"encoding\": \"latin-1\"}'") from e
    except LookupError as e:
      raise common.ReleaseError(csv_path, f"unknown encoding {encoding!r} in the builder "
                                "config") from e
    rows = read_rows(text, self.builder_config.split_fractions, self._report,
                     self.builder_config.identity_folders)
    names = split_names(self.builder_config.identity_folders)
    empty = [split for split in names if not rows[split]]
    if empty:
      # TFDS cannot write a split without examples (a small CSV may hash no
      # identity into validation or test): those splits are left out.
      logging.warning("age_csv: no rows for split(s) %s; left out.", ", ".join(empty))
    return {split: self._generate_examples(csv_path.parent, split, rows[split])
            for split in names if rows[split]}

  def _generate_examples(self, root: epath.Path, split: str,
                         rows: list[Row]) -> Iterator[tuple[str, dict]]:
    config = self.builder_config
    for row in rows:
      file = root / row.path
      if not file.exists():
        self._report.drop("missing_image")
        continue
      if not file.is_file():  # a folder (or a device) named in the CSV
        self._report.drop("not_a_file")
        continue
      try:
        image, box, (width, height) = face_crop.decode_for_crop(file.read_bytes(), row.box,
                                                  margin=config.margin, size=config.image_size,
                                                  reduced=config.reduced_decode)
        image = face_crop.crop(image, box, margin=config.margin, size=config.image_size)
      except face_crop.UndecodableImage:
        self._report.drop("undecodable_image")
        continue
      except ValueError:  # the box lies outside the image
        self._report.drop("bad_box")
        continue
      self._report.keep(split)
      yield row.path, dict(image=face_crop.encode_jpeg(image), age=row.age, gender=row.gender,
                           identity=row.identity, file_name=row.path,
                           face_size=common.face_size(row.box or (0, 0, width, height)))
