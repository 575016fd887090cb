"""UTKFace, aligned and cropped: 23,708 faces aged 0 to 116, labels in the file names.

Every file is named ``AGE_GENDER_RACE_DATETIME.jpg.chip.jpg`` (gender 0 male,
1 female; race 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others). A handful of
release files miss a field; they are counted and left out. The release has no
person ids and no splits, so each file's split follows from a hash of its name.
"""

from __future__ import annotations

import dataclasses
from typing import BinaryIO, Iterator, Sequence

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from agejax.data import face_crop
from data_builders import common


RELEASE_DIR = "UTKFace"
RELEASE_ARCHIVE = "UTKFace.tar.gz"
# UTKFace's gender codes, mapped to the common labels.
GENDERS = {0: "male", 1: "female"}
RACES = ("white", "black", "asian", "indian", "others")
MAX_AGE = 120
REPORT_FILE = common.REPORT_FILE


@dataclasses.dataclass(eq=False)
class UtkFaceConfig(tfds.core.BuilderConfig):
  """How the faces are stored and split.

  Attributes:
    image_size: side of the stored square image in pixels.
    reduced_decode: decode large JPEGs at 1/2..1/8 scale (libjpeg's DCT scaling)
      when the crop keeps at least twice the stored pixels a side (face_crop).
    split_fractions: train, validation and test shares of the hash split.
  """
  image_size: int = face_crop.DEFAULT_SIZE
  reduced_decode: bool = True
  split_fractions: Sequence[float] = common.DEFAULT_FRACTIONS

  def __post_init__(self):
    # JSON configs (`tfds build --config='{...}'`) give lists.
    self.split_fractions = tuple(self.split_fractions)


def parse_name(base_name: str) -> tuple[int, str, int] | None:
  """(age, gender name, race index) from a release file name, None if malformed."""
  fields = base_name.split(".", 1)[0].split("_")
  if len(fields) != 4 or not fields[3]:
    return None
  try:
    age, gender, race = (int(f) for f in fields[:3])
  except ValueError:
    return None
  if not 0 <= age <= MAX_AGE or gender not in GENDERS or not 0 <= race < len(RACES):
    return None
  return age, GENDERS[gender], race


class Builder(common.ReportingBuilder):
  """UTKFace aligned and cropped faces with age, gender and race."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Aligned and cropped release, hash split of the file names."}
  BUILDER_CONFIGS = [UtkFaceConfig(name="default", description="Faces stored at 256x256, 90/5/5.")]
  DEFAULT_CONFIG_NAME = "default"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download the "Aligned&Cropped Faces" release {RELEASE_ARCHIVE} from
  https://susanqq.github.io/UTKFace/ and put it in the manual dir (or extract it
  there, keeping the {RELEASE_DIR}/ folder).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=common.face_features(
            size,
            race=tfds.features.ClassLabel(names=list(RACES)),
            file_name=tfds.features.Text(),
        ),
        supervised_keys=("image", "age"),
        homepage="https://susanqq.github.io/UTKFace/",
    )


  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = epath.Path(dl_manager.manual_dir)
    archive = manual_dir / RELEASE_ARCHIVE
    folder = manual_dir / RELEASE_DIR
    if not archive.exists() and not folder.is_dir():
      raise FileNotFoundError(
          f"UTKFace not found in the manual dir {manual_dir}: expected {RELEASE_ARCHIVE} or the "
          f"extracted folder {RELEASE_DIR}/.")

    def files() -> Iterator[tuple[str, BinaryIO | None]]:
      if folder.is_dir():
        for path in sorted(folder.iterdir()):
          if not path.is_file():  # a subfolder or a special file: skipped, and counted
            yield f"{RELEASE_DIR}/{path.name}", None
            continue
          with path.open("rb") as f:
            yield f"{RELEASE_DIR}/{path.name}", f
      else:
        # Streamed: a split reads the archive front to back once, without
        # unpacking it to disk.
        yield from dl_manager.iter_archive(tfds.download.Resource(
            path=archive, extract_method=tfds.download.ExtractMethod.TAR_GZ_STREAM))

    splits = common.SPLITS
    if folder.is_dir():
      # TFDS cannot write a split without examples: a small release may hash
      # no face into validation or test. Those splits are left out.
      names = [p.name for p in folder.iterdir() if p.name.lower().endswith(".jpg")]
      present = {common.split_of(n, self.builder_config.split_fractions) for n in names}
      empty = [s for s in splits if s not in present]
      if empty:
        logging.warning("UTKFace: no images for split(s) %s; left out.", ", ".join(empty))
      splits = tuple(s for s in splits if s in present)
    return {split: self._generate_examples(files, split) for split in splits}

  def _generate_examples(self, files, split: str) -> Iterator[tuple[str, dict]]:
    fractions = self.builder_config.split_fractions
    for path, f in files():
      base_name = path.rsplit("/", 1)[-1]
      if f is not None and not base_name.lower().endswith(".jpg"):
        continue  # not a face image (notes, licences)
      # The split comes first, so each file is read, and counted, by one split
      # only; the bare name keys it, so archive and folder split alike.
      if common.split_of(base_name, fractions) != split:
        continue
      if f is None:
        self._report.drop("not_a_file")
        continue
      labels = parse_name(base_name)
      if labels is None:
        self._report.drop("malformed_name")
        continue
      try:
        image, _, _ = face_crop.decode_for_crop(f.read(), None,
                                                size=self.builder_config.image_size,
                                                reduced=self.builder_config.reduced_decode)
      except face_crop.UndecodableImage:
        self._report.drop("undecodable_image")
        continue
      age, gender, race = labels
      self._report.keep(split)
      yield base_name, dict(
          image=face_crop.encode_jpeg(
              face_crop.crop(image, None, size=self.builder_config.image_size)),
          age=age, gender=gender, race=race, file_name=f"{RELEASE_DIR}/{base_name}")
